"""Which endpoints a Service port may send to, by kube-proxy's rules.

An endpoint is a candidate for new connections when it is Ready; when no endpoint anywhere is
Ready, the Serving+Terminating ones are used instead so that a rolling update does not drop
traffic. Local policies look at this node's endpoints only, with the same fallback applied to
the local set. Topology narrows the cluster-wide set by the endpoints' hints alone, as
kube-proxy 1.33+ does (pkg/proxy/topology.go): the Service's trafficDistribution and
topology-mode annotation are read by the EndpointSlice controller, which writes the hints.
Node hints (PreferSameNode) win when every ready endpoint has one and one names this node;
else zone hints, when every ready endpoint has one and one names this node's zone; else none.
Topology never applies to the Local sets, nor to the serving-terminating fallback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .objects import (
    Endpoint,
    EndpointSlice,
    Node,
    Service,
    ServicePort,
)
from .state import Backend


@dataclass(frozen=True)
class PortEndpoint:
    """One endpoint of one Service port: an address, the port it listens on, its conditions."""

    endpoint: Endpoint
    address: str
    port: int

    def backend(self, node: Node | None, xlb_nodes: frozenset[str] = frozenset()) -> Backend:
        ep = self.endpoint
        local = bool(node and ep.node_name and ep.node_name == node.name)
        return Backend(
            self.address, self.port, ep.node_name, local, ep.terminating, ep.target,
            ready=ep.ready, serving=ep.serving,
            dsr=bool(ep.node_name) and ep.node_name in xlb_nodes,
        )  # fmt: skip


@dataclass(frozen=True)
class Categorized:
    cluster: tuple[Backend, ...]  # new-flow candidates for Cluster policy
    local: tuple[Backend, ...]  # new-flow candidates for Local policy
    # every endpoint that is terminating or not ready: flows already on them go on (kube-proxy
    # never breaks an established connection; a UDP flow to one that stopped serving moves)
    draining: tuple[Backend, ...]
    has_any: bool  # some endpoint anywhere can take traffic (reject vs drop)
    local_ready: frozenset[str]  # this node's ready endpoint addresses (healthCheckNodePort)


def port_endpoints(
    slices: Iterable[EndpointSlice], port: ServicePort, family: str
) -> list[PortEndpoint]:
    """Endpoints of `port` from slices of one family, deduplicated on (address, port) the way
    kube-proxy merges slices: the first slice (by name) wins."""
    seen: dict[tuple[str, int], PortEndpoint] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        if sl.address_type != family:
            continue
        match = [p for p in sl.ports if p.name == port.name and p.protocol == port.protocol]
        if not match:
            continue
        for ep in sl.endpoints:
            key = (ep.addresses[0], match[0].port)
            seen.setdefault(key, PortEndpoint(ep, key[0], key[1]))
    return [seen[k] for k in sorted(seen)]


SAME_NODE, SAME_ZONE = "PreferSameNode", "PreferSameZone"


def topology_mode(eps: list[PortEndpoint], node: Node | None) -> str:
    """ "", SAME_NODE or SAME_ZONE: which hints this node follows (kube-proxy's
    topologyModeFromHints: all-or-nothing per kind, over the ready endpoints only)."""
    ready = [pe.endpoint for pe in eps if pe.endpoint.ready]
    if not ready or node is None:
        return ""
    if all(ep.node_hints for ep in ready) and any(node.name in ep.node_hints for ep in ready):
        return SAME_NODE
    zone = node.zone
    if all(ep.zone_hints for ep in ready) and zone and any(zone in ep.zone_hints for ep in ready):
        return SAME_ZONE
    return ""


def _for_topology(ep: Endpoint, mode: str, node: Node | None) -> bool:
    """Whether ep is for this node under mode (no fallback here: mode was chosen so that
    some ready endpoint is)."""
    if mode == SAME_NODE:
        return node is not None and node.name in ep.node_hints
    if mode == SAME_ZONE:
        return node is not None and node.zone in ep.zone_hints
    return True


def categorize(
    service: Service,
    eps: list[PortEndpoint],
    node: Node | None,
    xlb_nodes: frozenset[str] = frozenset(),
) -> Categorized:
    """(xlb_nodes: the nodes known to run xlb, whose backends DSR may reach: Backend.dsr.)"""
    ready = [pe for pe in eps if pe.endpoint.ready]
    fallback = [pe for pe in eps if pe.endpoint.serving and pe.endpoint.terminating]

    mode = topology_mode(eps, node)
    cluster = [pe for pe in ready if _for_topology(pe.endpoint, mode, node)]
    if not cluster:
        cluster = fallback  # topology is not applied to the fallback, as in kube-proxy

    def is_local(pe: PortEndpoint) -> bool:
        return bool(node and pe.endpoint.node_name == node.name)

    local = [pe for pe in ready if is_local(pe)] or [pe for pe in fallback if is_local(pe)]

    def to_backends(items: list[PortEndpoint]) -> tuple[Backend, ...]:
        return tuple(pe.backend(node, xlb_nodes) for pe in items)

    return Categorized(
        cluster=to_backends(cluster),
        local=to_backends(local),
        draining=to_backends(
            [pe for pe in eps if pe.endpoint.terminating or not pe.endpoint.ready]
        ),
        has_any=bool(ready or fallback),
        local_ready=frozenset(pe.address for pe in ready if is_local(pe)),
    )
