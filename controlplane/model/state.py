"""What the datapath must hold: the output of translate(), input of the sync."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .diagnostics import Diagnostic
from .objects import Family, Protocol


class Scope(StrEnum):
    """Which hook looks a frontend up: the socket hooks (traffic that starts on the node or in its
    pods) or XDP on the uplink (traffic from outside). The same address can have both, with
    different backends: externalTrafficPolicy applies to outside traffic only."""

    INTERNAL = "internal"
    EXTERNAL = "external"


class FrontendKind(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    EXTERNAL_IP = "ExternalIP"
    LOAD_BALANCER = "LoadBalancer"


class Algorithm(StrEnum):
    MAGLEV = "maglev"  # consistent across nodes: any node sends a flow to the same backend
    SOURCE_HASH = "source-hash"  # on the client address, like IPVS sh
    RANDOM = "random"  # chosen once per connection at connect() time


class Forwarding(StrEnum):
    """How flows from outside reach backends on other nodes."""

    SNAT = "snat"  # source NAT to the node: replies come back through it
    DSR = "dsr"  # direct server return: the client's address kept, replies go straight back
    HYBRID = "hybrid"  # DSR for TCP, SNAT for UDP (a datagram near the MTU has no room)


class NoBackend(StrEnum):
    """What a packet to a frontend with no backend gets."""

    REJECT = "reject"  # no endpoints anywhere: TCP RST / ICMP unreachable / ECONNREFUSED
    DROP = "drop"  # endpoints exist, none usable from here (Local policy): like kube-proxy


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    address: str
    port: int
    node_name: str = ""
    local: bool = False
    terminating: bool = False
    target: str = ""  # the pod behind it, for display only
    ready: bool = True  # not ready: no new flows here (kept while its flows last)
    serving: bool = True  # not serving: its UDP flows move on too, its TCP ones stay
    dsr: bool = False  # its node runs xlb, which takes direct server return's carrier off

    @property
    def name(self) -> str:
        """Stable identity used by Maglev: the same on every node."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Frontend:
    service: str  # namespace/name
    port_name: str
    kind: FrontendKind
    scope: Scope
    address: str
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...]  # candidates for new flows
    draining: tuple[Backend, ...] = ()  # terminating: keep flows already on them, no new ones
    algorithm: Algorithm = Algorithm.RANDOM
    affinity_timeout: int = 0  # seconds; 0 means no session affinity
    no_backend: NoBackend = NoBackend.REJECT
    source_ranges: tuple[str, ...] = ()  # empty: everyone may connect
    preserve_client_ip: bool = False  # externalTrafficPolicy Local: no SNAT, local backends only
    # flows to backends on other nodes by direct server return (to those whose node runs
    # xlb: Backend.dsr), not SNAT
    dsr: bool = False

    @property
    def key(self) -> tuple[str, int, Protocol, Scope]:
        return (self.address, self.port, self.protocol, self.scope)

    @property
    def family(self) -> Family:
        # addresses here are validated and normalised: only IPv6 ones hold a colon
        return Family.IPv6 if ":" in self.address else Family.IPv4

    @property
    def endpoint(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else (f"{self.address}:{self.port}")
        )


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A healthCheckNodePort server: 200 while the node has local endpoints, 503 otherwise."""

    service: str
    port: int
    local_endpoints: int


@dataclass(frozen=True, slots=True)
class DesiredState:
    frontends: tuple[Frontend, ...] = ()
    health_checks: tuple[HealthCheck, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = field(default_factory=tuple)
    # The service address space, for what no frontend matches (kube-proxy's
    # cluster-ips-check): every allocated ClusterIP, refused on a port it does not serve, and
    # the service CIDRs, whose other addresses go nowhere. Empty: both left alone.
    cluster_ips: frozenset[str] = frozenset()
    service_cidrs: tuple[str, ...] = ()
    # every Node's addresses: a DSR carrier naming one with a NodePort is believed
    node_addresses: frozenset[str] = frozenset()
    # From a Translator: this state's number, the number of the state it was patched from,
    # and the Services whose frontends may differ from that one (None: unknown). A sync that
    # applied `base` last need only look at those Services. Not part of the state's value.
    serial: int = field(default=0, compare=False, repr=False)
    base: int = field(default=0, compare=False, repr=False)
    changed: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def by_key(self) -> dict[tuple[str, int, Protocol, Scope], Frontend]:
        return {f.key: f for f in self.frontends}

    def for_service(self, key: str) -> list[Frontend]:
        return [f for f in self.frontends if f.service == key]
