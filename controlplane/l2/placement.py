"""Balanced placement of LoadBalancer IPs (opt-in): bounded load, and few moves.

MetalLB's rule (election.owner) puts each IP on the first of its candidates in a hash order:
no coordination, but by chance several IPs land on one node (metallb#2284). Balanced
placement gives every node floor(IPs / nodes) or one more (its quota), and moves as little
as it can. No function of the node set alone can promise both (only a per-IP order moves
nothing but a leaving node's IPs, and a per-IP order cannot bound loads), so it starts from
what each node says it holds (the gossip carries that: holdings.py):

1. An IP stays with a live candidate that holds it (two holders: the better in the IP's hash
   order, as after a partition heals).
2. The IPs mod nodes quotas of one more go to the first nodes of a fixed hash order (not to
   whoever holds most: quotas must not change while holdings move).
3. A node over its quota keeps the IPs it ranks best and sheds the rest.
4. Every IP left (new ones, a dead node's, shed ones), in a fixed order, goes to the first
   candidate in its hash order under its quota (all full: the least over).

Every agent computes the same answer from the same holdings. A node that leaves moves only
its own IPs: the others keep theirs (within the old quotas, so within the new ones) and its
IPs fill the room the new quotas leave. A node that joins takes about its share from the
others. A node takes an IP only once no live member says it holds it (take_now): shedding
and placing one IP is then the same computation before and after the holder lets it go, so
the agents never disagree about where an IP goes while the holdings spread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def rank(node: str, ip: str) -> bytes:
    """Where node stands in ip's order (lower first): MetalLB's sha256(node#ip)."""
    return hashlib.sha256(f"{node}#{ip}".encode()).digest()


def balanced(
    candidates: Mapping[str, Iterable[str]], held: Mapping[str, Iterable[str]]
) -> dict[str, str]:
    """Each IP of candidates (ip -> the nodes that may announce it) -> its node; IPs without
    a candidate are absent. held: node -> the IPs it says it announces."""
    cands = {ip: sorted(set(c), key=lambda n: rank(n, ip)) for ip, c in candidates.items()}
    cands = {ip: c for ip, c in cands.items() if c}
    nodes = {n for c in cands.values() for n in c}
    if not nodes:
        return {}
    floor, extra = divmod(len(cands), len(nodes))
    holders: dict[str, list[str]] = {}
    for node, ips in held.items():
        for ip in ips:
            holders.setdefault(ip, []).append(node)

    # 1. holders keep (the best-ranked holder that is a candidate)
    kept: dict[str, list[str]] = {n: [] for n in nodes}
    for ip, order in cands.items():
        claim = set(holders.get(ip, ()))
        holder = next((n for n in order if n in claim), None)
        if holder is not None:
            kept[holder].append(ip)
    # 2. quotas
    quota = {
        n: floor + (1 if i < extra else 0)
        for i, n in enumerate(sorted(nodes, key=lambda n: rank(n, "")))
    }
    # 3. nobody over quota
    out: dict[str, str] = {}
    load = dict.fromkeys(nodes, 0)
    for node, ips in kept.items():
        for ip in sorted(ips, key=lambda ip: rank(node, ip))[: quota[node]]:
            out[ip] = node
            load[node] += 1
    # 4. the rest, in a fixed order
    for ip in sorted((ip for ip in cands if ip not in out), key=lambda ip: rank("", ip)):
        order = cands[ip]
        chosen = next((n for n in order if load[n] < quota[n]), None)
        if chosen is None:  # only full candidates (a narrow advertisement, or Local)
            chosen = min(order, key=lambda n: load[n] - quota[n])
        out[ip] = chosen
        load[chosen] += 1
    return out


def take_now(ip: str, me: str, held: Mapping[str, Iterable[str]]) -> bool:
    """Whether me may start announcing ip, which the placement gives it: not while another
    live member says it holds it (it lets go first, and tells; a dead member's holdings
    are not in held)."""
    return not any(ip in ips for node, ips in held.items() if node != me)
