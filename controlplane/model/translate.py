"""translate(services, slices, node) -> DesiredState: every kube-proxy rule, no I/O.

For each Service port and IP family it emits frontends:
* each ClusterIP, scope internal, backends by internalTrafficPolicy;
* each NodePort on the node's NodePort addresses, each externalIP and each LoadBalancer
  ingress IP, twice: scope external (traffic from outside, backends by externalTrafficPolicy)
  and scope internal (traffic from the node's own processes and pods, which kube-proxy sends
  to all endpoints whatever externalTrafficPolicy says).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .diagnostics import Collector, Diagnostic
from .endpoints import Categorized, categorize, port_endpoints
from .objects import (
    ANNOTATION_ALGORITHM,
    LABEL_SERVICE_PROXY_NAME,
    EndpointSlice,
    Family,
    Node,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)
from .parse import family_of
from .state import (
    Algorithm,
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    HealthCheck,
    NoBackend,
    Scope,
)


@dataclass(frozen=True)
class TranslateConfig:
    external_algorithm: Algorithm = Algorithm.MAGLEV
    internal_algorithm: Algorithm = Algorithm.RANDOM
    proxy_name: str = ""  # serve Services whose service-proxy-name label equals this
    nodeport_cidrs: tuple[str, ...] = ()  # empty: every address of the Node object
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP, Protocol.UDP})


def nodeport_addresses(node: Node | None, cidrs: tuple[str, ...]) -> tuple[str, ...]:
    if node is None:
        return ()
    if not cidrs:
        return node.addresses
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return tuple(a for a in node.addresses if any(ipaddress.ip_address(a) in n for n in nets))


def _algorithm(service: Service, scope: Scope, cfg: TranslateConfig, diag: Collector) -> Algorithm:
    raw = service.annotations.get(ANNOTATION_ALGORITHM)
    if raw:
        try:
            return Algorithm(raw)
        except ValueError:
            diag.warning(
                f"metadata.annotations[{ANNOTATION_ALGORITHM}]",
                f"{raw!r} is not one of maglev, source-hash, random; using the default",
            )
    return cfg.external_algorithm if scope is Scope.EXTERNAL else cfg.internal_algorithm


def _pick(cat: Categorized, policy: TrafficPolicy) -> tuple[tuple[Backend, ...], NoBackend]:
    backends = cat.local if policy is TrafficPolicy.LOCAL else cat.cluster
    no_backend = (
        NoBackend.DROP if (policy is TrafficPolicy.LOCAL and cat.has_any) else (NoBackend.REJECT)
    )
    return backends, no_backend


def _skip_reason(service: Service, cfg: TranslateConfig) -> str | None:
    proxy = service.labels.get(LABEL_SERVICE_PROXY_NAME)
    if proxy is not None and proxy != cfg.proxy_name:
        return (
            f"not proxied: labelled {LABEL_SERVICE_PROXY_NAME}={proxy!r}, so another proxy "
            "serves it"
        )
    if service.type is ServiceType.EXTERNAL_NAME:
        return (
            f"not proxied: ExternalName is a DNS CNAME to {service.external_name}; "
            "clients connect to that name directly"
        )
    if service.headless:
        return "not proxied: headless (clusterIP: None); DNS returns the endpoints themselves"
    return None


def _external_addresses(
    service: Service, family: Family, node: Node | None, cfg: TranslateConfig, diag: Collector
) -> list[tuple[FrontendKind, str]]:
    out: list[tuple[FrontendKind, str]] = []
    if service.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER):
        out += [
            (FrontendKind.NODE_PORT, a)
            for a in nodeport_addresses(node, cfg.nodeport_cidrs)
            if family_of(a) == family
        ]
    for ip in service.external_ips:
        if family_of(ip) == family:
            out.append((FrontendKind.EXTERNAL_IP, ip))
    if service.type is ServiceType.LOAD_BALANCER:
        out += [
            (FrontendKind.LOAD_BALANCER, ip)
            for ip in service.ingress_ips
            if family_of(ip) == family
        ]
    return out


def _translate_service(
    service: Service,
    slices: list[EndpointSlice],
    node: Node | None,
    cfg: TranslateConfig,
    diag: Collector,
) -> tuple[list[Frontend], HealthCheck | None]:
    frontends: list[Frontend] = []
    families = [family_of(ip) for ip in service.cluster_ips]
    for ip in list(service.external_ips) + list(service.ingress_ips):
        if family_of(ip) not in families:
            diag.warning(
                "spec.externalIPs" if ip in service.external_ips else "status.loadBalancer.ingress",
                f"{ip} ignored: the Service has no {family_of(ip)} ClusterIP; "
                "add the family to spec.ipFamilies",
            )
    local_ready = 0
    for i, sp in enumerate(service.ports):
        if sp.protocol not in cfg.supported_protocols:
            diag.warning(
                f"spec.ports[{i}].protocol",
                f"{sp.protocol} is not supported by xlb's datapath; this port is not "
                "proxied (TCP and UDP are)",
            )
            continue
        for family in families:
            cat = categorize(service, port_endpoints(slices, sp, family), node)
            local_ready = max(local_ready, cat.local_ready)
            frontends += _port_frontends(service, sp, family, cat, node, cfg, diag)
    health = None
    if service.health_check_node_port and service.external_traffic_policy is TrafficPolicy.LOCAL:
        health = HealthCheck(service.key, service.health_check_node_port, local_ready)
    return frontends, health


def _port_frontends(
    service: Service,
    sp: ServicePort,
    family: Family,
    cat: Categorized,
    node: Node | None,
    cfg: TranslateConfig,
    diag: Collector,
) -> list[Frontend]:
    def make(
        kind: FrontendKind, scope: Scope, address: str, port: int, policy: TrafficPolicy
    ) -> Frontend:
        backends, no_backend = _pick(cat, policy)
        chosen = set(backends)
        return Frontend(
            service=service.key,
            port_name=sp.name,
            kind=kind,
            scope=scope,
            address=address,
            port=port,
            protocol=sp.protocol,
            backends=backends,
            draining=tuple(b for b in cat.terminating if b not in chosen),
            algorithm=_algorithm(service, scope, cfg, diag),
            affinity_timeout=service.session_affinity_timeout,
            no_backend=no_backend,
            source_ranges=(
                service.load_balancer_source_ranges
                if kind is FrontendKind.LOAD_BALANCER and scope is Scope.EXTERNAL
                else ()
            ),
            preserve_client_ip=(scope is Scope.EXTERNAL and policy is TrafficPolicy.LOCAL),
        )

    out = [
        make(FrontendKind.CLUSTER_IP, Scope.INTERNAL, ip, sp.port, service.internal_traffic_policy)
        for ip in service.cluster_ips
        if family_of(ip) == family
    ]
    for kind, address in _external_addresses(service, family, node, cfg, diag):
        if kind is FrontendKind.NODE_PORT:
            if not sp.node_port:
                continue  # allocateLoadBalancerNodePorts: false
            port = sp.node_port
        else:
            port = sp.port
        out.append(make(kind, Scope.EXTERNAL, address, port, service.external_traffic_policy))
        out.append(make(kind, Scope.INTERNAL, address, port, TrafficPolicy.CLUSTER))
    return out


_Translated = tuple[list[Frontend], "HealthCheck | None", list[Diagnostic]]


class Translator:
    """translate() that remembers each Service's translation and reuses it while the
    Service, its slices, the node and the config are the very same objects: a source that
    parses an object once per version (the Kubernetes source) hands over the same objects
    for everything that did not change, so one endpoint change re-translates one Service.
    (Node and config are compared by value: they are small.)"""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[Service, tuple, Node | None, TranslateConfig, _Translated]] = {}

    def __call__(
        self,
        services: Iterable[Service],
        slices: Iterable[EndpointSlice],
        node: Node | None,
        config: TranslateConfig | None = None,
    ) -> DesiredState:
        seen: set[str] = set()
        cfg = config or TranslateConfig()

        def one(service: Service, mine: list[EndpointSlice]) -> _Translated:
            seen.add(service.key)
            hit = self.cache.get(service.key)
            if (
                hit is not None
                and hit[0] is service
                and hit[2] == node
                and hit[3] == cfg
                and len(hit[1]) == len(mine)
                and all(a is b for a, b in zip(hit[1], mine, strict=True))
            ):
                return hit[4]
            out = _translate_fresh(service, mine, node, cfg)
            self.cache[service.key] = (service, tuple(mine), node, cfg, out)
            return out

        state = _translate(services, slices, node, cfg, one)
        for key in [k for k in self.cache if k not in seen]:
            del self.cache[key]
        return state


def _translate_fresh(
    service: Service, mine: list[EndpointSlice], node: Node | None, cfg: TranslateConfig
) -> _Translated:
    diag = Collector("Service", service.namespace, service.name)
    fes, hc = _translate_service(service, mine, node, cfg, diag)
    return fes, hc, list(diag.items)


def translate(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    node: Node | None,
    config: TranslateConfig | None = None,
) -> DesiredState:
    """The frontends this node must serve. Problems with one Service become diagnostics and
    never affect another Service."""
    cfg = config or TranslateConfig()
    return _translate(
        services, slices, node, cfg, lambda svc, mine: _translate_fresh(svc, mine, node, cfg)
    )


def _translate(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    node: Node | None,
    cfg: TranslateConfig,
    one: Callable[[Service, list[EndpointSlice]], _Translated],
) -> DesiredState:
    by_service: dict[str, list[EndpointSlice]] = defaultdict(list)
    for sl in slices:
        by_service[sl.service_key].append(sl)

    frontends: list[Frontend] = []
    health: list[HealthCheck] = []
    diagnostics: list[Diagnostic] = []
    owner: dict[tuple[str, int, Protocol, Scope], str] = {}
    for service in sorted(services, key=lambda s: s.key):
        diag = Collector("Service", service.namespace, service.name)
        reason = _skip_reason(service, cfg)
        if reason:
            diag.info("", reason)
            diagnostics += diag.items
            continue
        if not service.cluster_ips:
            diag.warning(
                "spec.clusterIP", "no ClusterIP allocated yet; not proxied until it has one"
            )
            diagnostics += diag.items
            continue
        mine, hc, items = one(service, by_service.get(service.key, []))
        diag.items.extend(items)
        reported: set[tuple[str, int, Protocol]] = set()
        for fe in mine:
            other = owner.get(fe.key)
            if other is not None:
                if other != service.key and fe.key[:3] not in reported:
                    reported.add(fe.key[:3])
                    diag.error(
                        "",
                        f"{fe.protocol} {fe.endpoint} is already served by Service "
                        f"{other}; skipped here: give one of them another address or port",
                    )
                continue  # the same address twice in one Service (e.g. node IP as externalIP)
            owner[fe.key] = service.key
            frontends.append(fe)
        if hc:
            health.append(hc)
        diagnostics += diag.items
    return DesiredState(tuple(frontends), tuple(health), tuple(diagnostics))
