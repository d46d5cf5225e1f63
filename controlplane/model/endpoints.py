"""Which endpoints a Service port may send to, by kube-proxy's rules.

An endpoint is a candidate for new connections when it is Ready; when no endpoint anywhere is
Ready, the Serving+Terminating ones are used instead so that a rolling update does not drop
traffic. Local policies look at this node's endpoints only, with the same fallback applied to
the local set. Topology hints narrow the cluster-wide set to this zone when every endpoint has
hints and the Service asked for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .objects import (
    ANNOTATION_TOPOLOGY_HINTS,
    ANNOTATION_TOPOLOGY_MODE,
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

    def backend(self, node: Node | None) -> Backend:
        ep = self.endpoint
        local = bool(node and ep.node_name and ep.node_name == node.name)
        return Backend(self.address, self.port, ep.node_name, local, ep.terminating, ep.target)


@dataclass(frozen=True)
class Categorized:
    cluster: tuple[Backend, ...]  # new-flow candidates for Cluster policy
    local: tuple[Backend, ...]  # new-flow candidates for Local policy
    terminating: tuple[Backend, ...]  # every terminating endpoint: flows already on them go on
    has_any: bool  # some endpoint anywhere can take traffic (reject vs drop)
    local_ready: int  # for the healthCheckNodePort


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


def _wants_topology(service: Service) -> bool:
    mode = service.annotations.get(
        ANNOTATION_TOPOLOGY_MODE, service.annotations.get(ANNOTATION_TOPOLOGY_HINTS, "")
    )
    return mode.lower() == "auto" or service.traffic_distribution in (
        "PreferClose",
        "PreferSameZone",
    )


def _use_topology(service: Service, eps: list[PortEndpoint], node: Node | None) -> bool:
    if not _wants_topology(service) or node is None or not node.zone:
        return False
    ready = [pe.endpoint for pe in eps if pe.endpoint.ready]
    if not ready or any(not ep.zone_hints for ep in ready):
        return False  # hints are all-or-nothing: one endpoint without hints disables them
    return any(node.zone in ep.zone_hints for ep in ready)


def categorize(service: Service, eps: list[PortEndpoint], node: Node | None) -> Categorized:
    ready = [pe for pe in eps if pe.endpoint.ready]
    fallback = [pe for pe in eps if pe.endpoint.serving and pe.endpoint.terminating]

    cluster = ready
    if _use_topology(service, eps, node):
        assert node is not None
        cluster = [pe for pe in ready if node.zone in pe.endpoint.zone_hints]
    if not cluster:
        cluster = fallback  # topology is not applied to the fallback, as in kube-proxy

    def is_local(pe: PortEndpoint) -> bool:
        return bool(node and pe.endpoint.node_name == node.name)

    local = [pe for pe in ready if is_local(pe)] or [pe for pe in fallback if is_local(pe)]

    def to_backends(items: list[PortEndpoint]) -> tuple[Backend, ...]:
        return tuple(pe.backend(node) for pe in items)

    return Categorized(
        cluster=to_backends(cluster),
        local=to_backends(local),
        terminating=to_backends([pe for pe in eps if pe.endpoint.terminating]),
        has_any=bool(ready or fallback),
        local_ready=sum(1 for pe in ready if is_local(pe)),
    )
