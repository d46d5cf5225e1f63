"""Which node answers for a LoadBalancer IP: computed alike by every agent, no coordination.

MetalLB's layer-2 rule: order the candidate nodes by sha256(node + "#" + ip) and take the
first. Candidates are the live members that are not excluded from load balancers (the
node.kubernetes.io/exclude-from-external-load-balancers label, a NetworkUnavailable
condition), under externalTrafficPolicy Local only those with a local endpoint that is ready
or serving (a node without one would drop the traffic; one whose endpoints all terminate
still serves them through its NodePort, so it must not go dark), and only nodes an
L2Advertisement admits (its pools, node selectors and interfaces). When a node dies, every
IP it owned moves to the next node in that IP's order; the others stay where they are.
Balanced placement (opt-in: --l2-placement balanced, or a pool annotated
xlb.io/l2-placement: balanced) places those IPs by placement.balanced instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from ..model.objects import EndpointSlice, Node, Service, ServiceType, TrafficPolicy
from ..model.pools import Advertisement, Pool, ours, pool_of
from .placement import balanced, rank


def owner(ip: str, candidates: Iterable[str]) -> str | None:
    return min(candidates, key=lambda n: rank(n, ip), default=None)


def ours_to_announce(
    services: Iterable[Service], pools: list[Pool] | None, lb_class: str = ""
) -> set[str]:
    """The LoadBalancer IPs xlb may answer for on the LAN (see owners)."""
    return {
        ip
        for svc in services
        if svc.type is ServiceType.LOAD_BALANCER and ours(svc, lb_class)
        for ip in svc.ingress_ips
        if pools is None or pool_of(ip, pools) is not None
    }


def owners(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    nodes: Iterable[Node],
    live: set[str],
    advertisements: list[Advertisement] | None = None,
    pools: list[Pool] | None = None,
    uplinks: dict[str, str] | None = None,
    lb_class: str = "",
    balance: Callable[[str], bool] | None = None,
    held: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, str]:
    """Every LoadBalancer IP of xlb's -> the node that announces it (IPs with no candidate:
    absent). xlb's are the addresses in its pools of the Services of its classes (none, or
    --lb-class): anyone who can write a Service's status could otherwise make the nodes
    answer ARP for any address on the LAN, the gateway's included. (pools None: the caller
    has no pools to judge by, and every ingress IP counts.) Others' are still balanced when
    they reach the node, as kube-proxy does, but never answered for.

    With no L2Advertisement at all, every node announces every pool (xlb's default); once
    one exists, MetalLB's rule holds: an address is announced only if an advertisement covers
    its pool, and then only from the nodes its nodeSelectors admit whose uplink is among its
    interfaces (a node whose uplink is not yet known is taken to match: the gossip tells
    every agent within one probe round).

    balance(ip) true: the IP is placed by placement.balanced among the other such IPs, from
    held (node -> the IPs it says it announces)."""
    nodes = [n for n in nodes if n.name in live and not n.excluded_from_load_balancers]
    uplinks = uplinks or {}
    ready_on: dict[str, set[str]] = {}
    for sl in slices:
        for ep in sl.endpoints:
            # MetalLB's EndpointCanServe (ready, or serving), read as kube-proxy reads serving:
            # a terminating endpoint that still serves is what the node's NodePort uses when
            # it has no ready one (serving given as nil means ready's value for the others)
            if (ep.ready or (ep.serving and ep.terminating)) and ep.node_name:
                ready_on.setdefault(sl.service_key, set()).add(ep.node_name)

    def admitted(ad: Advertisement) -> set[str]:
        return {
            n.name
            for n in nodes
            if ad.admits(n.labels)
            and (not ad.interfaces or uplinks.get(n.name, ad.interfaces[0]) in ad.interfaces)
        }

    everyone = {n.name for n in nodes}
    out: dict[str, str] = {}
    balanced_candidates: dict[str, set[str]] = {}
    services = list(services)
    announceable = ours_to_announce(services, pools, lb_class)
    for svc in services:
        if svc.type is not ServiceType.LOAD_BALANCER:
            continue
        for ip in svc.ingress_ips:
            if ip not in announceable:
                continue
            if advertisements is None:
                candidates = everyone
            else:
                pool = pool_of(ip, pools or [])
                candidates = set().union(*(admitted(a) for a in advertisements if a.covers(pool)))
            if svc.external_traffic_policy is TrafficPolicy.LOCAL:
                candidates = candidates & ready_on.get(svc.key, set())
            if balance is not None and balance(ip):
                balanced_candidates[ip] = candidates
                continue
            chosen = owner(ip, candidates)
            if chosen is not None:
                out[ip] = chosen
    if balanced_candidates:
        live_held = {n: ips for n, ips in (held or {}).items() if n in everyone}
        out.update(balanced(balanced_candidates, live_held))
    return out


def drained(slices: Iterable[EndpointSlice], dead: set[str]) -> list[EndpointSlice]:
    """The slices with every ready endpoint on a dead node (as the gossip declared it, long
    before Kubernetes marks it not ready, ~40 s) turned terminating and still serving: new
    connections go to endpoints elsewhere, a flow already there keeps its backend, and
    where nothing else is left the node's endpoints are still tried (kube-proxy's fallback
    to serving terminating endpoints). Slices with none there are the same objects."""
    out = []
    for sl in slices:
        if not any(ep.node_name in dead and not ep.terminating for ep in sl.endpoints):
            out.append(sl)
            continue
        endpoints = tuple(
            dataclasses.replace(ep, ready=False, serving=ep.serving or ep.ready, terminating=True)
            if ep.node_name in dead and not ep.terminating
            else ep
            for ep in sl.endpoints
        )
        out.append(dataclasses.replace(sl, endpoints=endpoints))
    return out
