"""Balanced placement (l2/placement.py): the issue's bounds (with N nodes and k*N IPs no node
holds more than ceil(k)+1; a node leaving moves only its own IPs; in fact loads differ by at
most one), a joining node taking only its share, and agents that never disagree while
holdings spread. MetalLB's order beside it,
for the imbalance it leaves."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from controlplane.l2.election import owner, owners
from controlplane.l2.placement import balanced, take_now
from controlplane.model.objects import Node, Service, ServiceType
from controlplane.model.pools import parse_pool


def ips(n: int) -> list[str]:
    return [f"192.168.{200 + i // 250}.{1 + i % 250}" for i in range(n)]


def nodes(n: int) -> list[str]:
    return [f"node-{i}" for i in range(1, n + 1)]


def everywhere(addresses, names) -> dict[str, set[str]]:
    return {ip: set(names) for ip in addresses}


def holdings(placed: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ip, node in placed.items():
        out.setdefault(node, set()).add(ip)
    return out


def steady(cands: dict[str, set[str]]) -> dict[str, str]:
    """Placement from nothing, then fed back until nobody changes (one round here)."""
    placed = balanced(cands, {})
    again = balanced(cands, holdings(placed))
    assert again == placed, "a placement fed back as holdings must stay as it is"
    return placed


CASES = [(n, k) for n in (3, 4, 5) for k in (1, 2, 2.5, 3.7, 10)]


@pytest.mark.parametrize("n,k", CASES)
def test_no_node_holds_more_than_ceil_k_plus_one(n, k):
    names, addresses = nodes(n), ips(round(k * n))
    placed = steady(everywhere(addresses, names))
    loads = Counter(placed.values())
    ordered = Counter(owner(ip, names) for ip in addresses)
    print(f"n={n} k={k}: balanced max {max(loads.values())}, MetalLB order max "
          f"{max(ordered.values())}")  # fmt: skip
    assert set(placed) == set(addresses)
    assert max(loads.values()) <= math.ceil(k) + 1
    assert max(loads.values()) <= math.ceil(len(addresses) / n)  # in fact at the cap
    assert max(loads.values()) - min(loads[x] for x in names) <= 1  # and even


@pytest.mark.parametrize("n,k", CASES)
def test_a_node_leaving_moves_only_its_own_ips(n, k):
    names, addresses = nodes(n), ips(round(k * n))
    before = steady(everywhere(addresses, names))
    for gone in names:
        rest = [x for x in names if x != gone]
        held = {node: s for node, s in holdings(before).items() if node != gone}
        after = balanced(everywhere(addresses, rest), held)
        moved = {ip for ip in addresses if after[ip] != before[ip]}
        assert moved == {ip for ip, node in before.items() if node == gone}
        loads = Counter(after.values())
        assert max(loads.values()) <= math.ceil(len(addresses) / (n - 1))
        assert max(loads.values()) - min(loads[x] for x in rest) <= 1


@pytest.mark.parametrize("n,k", CASES)
def test_a_node_joining_takes_only_its_share(n, k):
    """Every IP that moves goes to the newcomer, and it takes no more than its share."""
    names, addresses = nodes(n), ips(round(k * n))
    before = steady(everywhere(addresses, names))
    grown = names + ["node-new"]
    after = balanced(everywhere(addresses, grown), holdings(before))
    moved = [ip for ip in addresses if after[ip] != before[ip]]
    loads = Counter(after.values())
    assert all(after[ip] == "node-new" for ip in moved)
    assert len(moved) == loads["node-new"] <= math.ceil(len(addresses) / (n + 1))
    assert max(loads.values()) - min(loads[x] for x in grown) <= 1
    assert balanced(everywhere(addresses, grown), holdings(after)) == after


def test_agents_agree_at_every_step_while_holdings_spread():
    """A node joins: the others learn the new placement at different times and act on it one
    by one (shed, take; the newcomer takes last, after its settle). Whatever mix of old and
    new holdings an agent sees, it computes the same target, so nobody flips back."""
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randint(3, 5)
        names, addresses = nodes(n), ips(rng.randint(n, 6 * n))
        before = steady(everywhere(addresses, names))
        grown = names + ["node-new"]
        cands = everywhere(addresses, grown)
        target = balanced(cands, holdings(before))
        for acted in itertools.chain.from_iterable(
            itertools.combinations(grown, r) for r in range(len(grown) + 1)
        ):
            held = holdings(before)
            held.setdefault("node-new", set())
            for node in acted:  # shed what is no longer ours; take what is (the newcomer too)
                held[node] = {ip for ip, who in target.items() if who == node}
            if "node-new" not in acted:  # still settling: it takes nothing yet
                held["node-new"] = set()
            assert balanced(cands, held) == target, acted


def test_from_any_holdings_the_agents_settle_balanced():
    """Any start (a healed partition, restarts: IPs held twice, by nobody, unevenly): nodes
    act one at a time in a random order, each on its own computation from what the others
    say they hold (letting go at once, taking only what no one else holds). They reach a
    placement nobody wants to change, with loads at most one apart."""
    rng = random.Random(11)
    steps = []
    for _ in range(300):
        names = nodes(rng.randint(2, 5))
        addresses = ips(rng.randint(1, 4 * len(names)))
        cands = everywhere(addresses, names)
        held = {x: {ip for ip in addresses if rng.random() < 0.3} for x in names}
        for actions in itertools.count(1):
            assert actions <= 300, f"no fixed point after 300 actions: {held}"
            x = rng.choice(names)
            mine = {ip for ip, who in balanced(cands, held).items() if who == x}
            held[x] = (held[x] & mine) | {ip for ip in mine - held[x] if take_now(ip, x, held)}
            target = balanced(cands, held)
            if all(held[y] == {ip for ip, w in target.items() if w == y} for y in names):
                break
        steps.append(actions)
        loads = [len(held[y]) for y in names]
        assert max(loads) - min(loads) <= 1, held
    print(f"actions to settle: median {sorted(steps)[len(steps) // 2]}, max {max(steps)}")


def test_two_holders_of_one_ip_resolve_alike_on_every_node():
    """After a partition heals both sides hold some IPs: the better in the IP's order keeps
    each, whatever order the holdings arrive in."""
    names, addresses = nodes(3), ips(9)
    cands = everywhere(addresses, names)
    both = {"node-1": set(addresses[:6]), "node-2": set(addresses[3:]), "node-3": set()}
    a = balanced(cands, both)
    b = balanced(dict(reversed(cands.items())), dict(reversed(both.items())))
    assert a == b
    for ip in addresses[3:6]:
        assert a[ip] == owner(ip, {"node-1", "node-2"}) or a[ip] == "node-3"


def test_an_ip_only_one_node_may_announce_stays_there_over_cap():
    """externalTrafficPolicy Local: only nodes with an endpoint are candidates. Balance
    yields to that; the others keep within the cap around it."""
    names, addresses = nodes(3), ips(9)
    cands = everywhere(addresses, names)
    for ip in addresses[:5]:
        cands[ip] = {"node-1"}
    placed = steady(cands)
    assert all(placed[ip] == "node-1" for ip in addresses[:5])
    rest = Counter(placed[ip] for ip in addresses[5:])
    assert "node-1" not in rest and max(rest.values()) <= 3  # the cap: ceil(9 / 3)


def test_held_ips_that_are_no_longer_candidates_are_not_kept():
    names, addresses = nodes(3), ips(6)
    cands = everywhere(addresses, names)
    cands[addresses[0]] = {"node-2", "node-3"}  # node-1 lost its last local endpoint
    placed = balanced(cands, {"node-1": set(addresses)})
    assert placed[addresses[0]] != "node-1"


def _svc(name: str, ip: str) -> Service:
    return Service(
        namespace="default",
        name=name,
        type=ServiceType.LOAD_BALANCER,
        ingress_ips=(ip,),
    )


def test_owners_balances_only_what_is_asked_and_only_live_holdings_count():
    names = nodes(3)
    node_objs = [Node(name=n) for n in names]
    services = [_svc(f"s{i}", ip) for i, ip in enumerate(ips(12))]
    balance_all = owners(services, [], node_objs, set(names), balance=lambda ip: True, held={})
    assert max(Counter(balance_all.values()).values()) == 4
    ordered = owners(services, [], node_objs, set(names))
    assert ordered == {ip: owner(ip, names) for ip in ips(12)}
    half = set(ips(12)[:6])
    mixed = owners(services, [], node_objs, set(names), balance=half.__contains__, held={})
    assert {ip: mixed[ip] for ip in ips(12)[6:]} == {ip: ordered[ip] for ip in ips(12)[6:]}
    # a dead node's published holdings are not kept
    dead_held = {"node-3": set(ips(12))}
    live = {"node-1", "node-2"}
    got = owners(services, [], node_objs, live, balance=lambda ip: True, held=dead_held)
    assert set(got.values()) <= live and max(Counter(got.values()).values()) == 6


def test_a_pool_asks_for_balanced_placement_by_annotation():
    def pool(annotations):
        return parse_pool(
            {
                "metadata": {"name": "lan", "annotations": annotations},
                "spec": {"addresses": ["192.168.1.240/28"]},
            }
        )

    assert pool({"xlb.io/l2-placement": "balanced"})[0].balanced
    assert not pool({"xlb.io/l2-placement": "ordered"})[0].balanced
    assert not pool(None)[0].balanced
    p, diags = pool({"xlb.io/l2-placement": "round-robin"})
    assert not p.balanced
    (d,) = diags
    assert "xlb.io/l2-placement" in d.field and "round-robin" in d.message
