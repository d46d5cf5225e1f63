"""Which node answers for a LoadBalancer IP: computed alike by every agent, no coordination.

MetalLB's layer-2 rule: order the candidate nodes by sha256(node + "#" + ip) and take the
first. Candidates are the live members, and under externalTrafficPolicy Local only those with
a ready local endpoint (a node without one would drop the traffic), and only nodes an
L2Advertisement's selector admits. When a node dies, every IP it owned moves to the next node
in that IP's order; the others stay where they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..model.objects import EndpointSlice, Node, Service, ServiceType, TrafficPolicy


def owner(ip: str, candidates: Iterable[str]) -> str | None:
    return min(
        candidates, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest(), default=None
    )


def selector_admits(selector: dict | None, node: Node) -> bool:
    """An L2Advertisement nodeSelectors entry (matchLabels only); none admits every node."""
    if not selector:
        return True
    return all(node.labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def owners(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    nodes: Iterable[Node],
    live: set[str],
    node_selectors: list[dict] | None = None,
) -> dict[str, str]:
    """Every LoadBalancer IP -> the node that announces it (IPs with no candidate: absent)."""
    nodes = list(nodes)
    admitted = {
        n.name
        for n in nodes
        if n.name in live
        and (not node_selectors or any(selector_admits(s, n) for s in node_selectors))
    }
    ready_on: dict[str, set[str]] = {}
    for sl in slices:
        for ep in sl.endpoints:
            if ep.ready and ep.node_name:
                ready_on.setdefault(sl.service_key, set()).add(ep.node_name)
    out: dict[str, str] = {}
    for svc in services:
        if svc.type is not ServiceType.LOAD_BALANCER:
            continue
        candidates = admitted
        if svc.external_traffic_policy is TrafficPolicy.LOCAL:
            candidates = admitted & ready_on.get(svc.key, set())
        for ip in svc.ingress_ips:
            chosen = owner(ip, candidates)
            if chosen is not None:
                out[ip] = chosen
    return out
