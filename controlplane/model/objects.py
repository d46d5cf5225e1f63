"""Typed, immutable views of the Kubernetes objects xlb reads.

Only the fields kube-proxy acts on are kept. Every default is already applied (the API server's
defaulting), so the translator never has to ask "was this set?".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class Family(StrEnum):
    IPv4 = "IPv4"
    IPv6 = "IPv6"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


# The API server's default and maximum for sessionAffinityConfig.clientIP.timeoutSeconds.
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400

# Labels and annotations with meaning to a service proxy.
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_EXCLUDE_LB = "node.kubernetes.io/exclude-from-external-load-balancers"
TAINT_TO_BE_DELETED = "ToBeDeletedByClusterAutoscaler"
ANNOTATION_ALGORITHM = "xlb.io/lb-algorithm"
ANNOTATION_FORWARDING = "xlb.io/forwarding-mode"  # snat | dsr | hybrid
ANNOTATION_TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"
ANNOTATION_TOPOLOGY_HINTS = "service.kubernetes.io/topology-aware-hints"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """namespace/name of an object, printed the way kubectl users read it."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str  # a number or the name of a container port
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: ServiceType = ServiceType.CLUSTER_IP
    cluster_ips: tuple[str, ...] = ()  # empty when headless ("None") or not yet allocated
    headless: bool = False
    ip_families: tuple[Family, ...] = ()
    ip_family_policy: str = ""  # "" means SingleStack, as the API server defaults it
    ports: tuple[ServicePort, ...] = ()
    selector: dict[str, str] | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ip: str = ""  # spec.loadBalancerIP: a request, not an allocation
    ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip with ipMode VIP
    load_balancer_source_ranges: tuple[str, ...] = ()
    load_balancer_class: str = ""  # spec.loadBalancerClass: which controller gives the IP
    session_affinity_timeout: int = 0  # 0: sessionAffinity None
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int = 0
    allocate_lb_node_ports: bool = True
    publish_not_ready: bool = False
    traffic_distribution: str = ""
    external_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # metadata.creationTimestamp (RFC 3339, UTC: sorts as text) and uid: who is older when
    # two Services claim one frontend
    created: str = ""
    uid: str = ""
    key: str = field(init=False, repr=False, compare=False, default="")  # namespace/name

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.namespace, self.name)

    def __post_init__(self) -> None:  # namespace/name, once: it is looked up a lot
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    def __hash__(self) -> int:  # dict fields are not hashable; identity is namespace/name
        return hash(("Service", self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True  # the API's nil already mapped to True
    serving: bool = True  # nil maps to the value of ready
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hostname: str = ""
    target: str = ""  # the pod (or other object) behind it, for display
    zone_hints: tuple[str, ...] = ()  # hints.forZones: the zones whose nodes may use it
    node_hints: tuple[str, ...] = ()  # hints.forNodes (PreferSameNode): the nodes that may


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    trigger_time: str = ""  # endpoints.kubernetes.io/last-change-trigger-time
    service_key: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:  # the Service's namespace/name, once
        object.__setattr__(self, "service_key", f"{self.namespace}/{self.service_name}")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...] = ()  # InternalIP first, then ExternalIP
    labels: dict[str, str] = field(default_factory=dict)
    pod_cidrs: tuple[str, ...] = ()
    network_unavailable: bool = False  # its NetworkUnavailable condition is True
    # being deleted: a deletionTimestamp, or the cluster autoscaler's ToBeDeletedByClusterAutoscaler
    # taint (kube-proxy's /healthz then answers 503, so load balancers drain the node)
    to_be_deleted: bool = False

    @property
    def zone(self) -> str:
        return self.labels.get(LABEL_ZONE, "")

    @property
    def excluded_from_load_balancers(self) -> bool:
        """Whether this node may not announce LoadBalancer IPs: MetalLB's (and the cloud
        providers') rule, the exclusion label with any value, or a node whose network is
        not up."""
        return LABEL_EXCLUDE_LB in self.labels or self.network_unavailable

    def __hash__(self) -> int:
        return hash(("Node", self.name))


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class Pod:
    """The little of a Pod that a manifest-only cluster needs to make EndpointSlices (the
    Kubernetes source reads slices, never Pods)."""

    namespace: str
    name: str
    labels: dict[str, str]
    ports: tuple[ContainerPort, ...]
    node_name: str = ""
    ips: tuple[str, ...] = ()
    ready: bool = True
    terminating: bool = False
    terminal: bool = False  # phase Succeeded or Failed: in no EndpointSlice
    owner: str = ""  # the workload it belongs to, if any
    ordinal: int = 0  # its replica number in that workload: spreads replicas over nodes

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))
