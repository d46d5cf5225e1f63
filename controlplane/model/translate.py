"""translate(services, slices, node) -> DesiredState: every kube-proxy rule, no I/O.

For each Service port and IP family it emits frontends:
* each ClusterIP, scope internal, backends by internalTrafficPolicy;
* each NodePort on the node's NodePort addresses, each externalIP and each LoadBalancer
  ingress IP, twice: scope external (traffic from outside, backends by externalTrafficPolicy)
  and scope internal (traffic from the node's own processes and pods, which kube-proxy sends
  to all endpoints whatever externalTrafficPolicy says).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import ipaddress
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from .diagnostics import Collector, Diagnostic
from .endpoints import Categorized, categorize, port_endpoints
from .objects import (
    ANNOTATION_ALGORITHM,
    ANNOTATION_FORWARDING,
    LABEL_HEADLESS,
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
from .snapshot import EVERYTHING, Changes, slices_by_service
from .state import (
    Algorithm,
    Backend,
    DesiredState,
    Forwarding,
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
    # "": serve the Services without a service-proxy-name label (kube-proxy's rule); else
    # only those labelled with this name (as Cilium's k8s-service-proxy-name)
    proxy_name: str = ""
    # kube-proxy's --nodeport-addresses: CIDRs and "primary" (the Node's first address of
    # each family); empty: every address of the node
    nodeport_cidrs: tuple[str, ...] = ()
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP, Protocol.UDP})
    # --external-ips: ("allow",), ("deny",) (the API's DenyServiceExternalIPs), or CIDRs that
    # externalIPs must fall in (CVE-2020-8554: any tenant may name any address)
    external_ips: tuple[str, ...] = ("allow",)
    # every Node's addresses, cluster-wide: never taken by an externalIP or an ingress IP
    node_addresses: frozenset[str] = frozenset()
    # --forwarding-mode: how flows from outside reach backends on other nodes, unless a
    # Service's xlb.io/forwarding-mode says otherwise
    forwarding: Forwarding = Forwarding.SNAT
    # the nodes known to run xlb (the gossip's live members): only their backends take DSR,
    # which needs xlb on the backend's node to take the carrier off; others get SNAT
    xlb_nodes: frozenset[str] = frozenset()


NODEPORT_PRIMARY = "primary"


def nodeport_addresses(node: Node | None, cidrs: tuple[str, ...]) -> tuple[str, ...]:
    """The node's addresses that NodePorts answer on, as kube-proxy's --nodeport-addresses
    admits them: in one of the CIDRs, or the primary address of its family."""
    if node is None:
        return ()
    if not cidrs:
        return node.addresses
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs if c != NODEPORT_PRIMARY]
    primary = set()
    if NODEPORT_PRIMARY in cidrs:
        for family in Family:
            first = next((a for a in node.addresses if family_of(a) == family), None)
            if first:
                primary.add(first)
    return tuple(
        a for a in node.addresses if a in primary or any(ipaddress.ip_address(a) in n for n in nets)
    )


E = TypeVar("E", bound=StrEnum)


def _annotated(service: Service, annotation: str, kind: type[E], fallback: E, instead: str,
               diag: Collector) -> E:  # fmt: skip
    """The Service's choice of kind by its annotation, else fallback; a value that is none
    of kind's is said (with what is used instead) and ignored."""
    raw = service.annotations.get(annotation)
    if raw:
        try:
            return kind(raw)
        except ValueError:
            diag.warning(
                f"metadata.annotations[{annotation}]",
                f"{raw!r} is not one of {', '.join(k.value for k in kind)}; {instead}",
            )
    return fallback


def _algorithm(service: Service, scope: Scope, cfg: TranslateConfig, diag: Collector) -> Algorithm:
    default = cfg.external_algorithm if scope is Scope.EXTERNAL else cfg.internal_algorithm
    return _annotated(service, ANNOTATION_ALGORITHM, Algorithm, default, "using the default", diag)


def _forwarding(service: Service, cfg: TranslateConfig, diag: Collector) -> Forwarding:
    instead = f"using the node's --forwarding-mode ({cfg.forwarding})"
    return _annotated(service, ANNOTATION_FORWARDING, Forwarding, cfg.forwarding, instead, diag)


def _pick(cat: Categorized, policy: TrafficPolicy) -> tuple[tuple[Backend, ...], NoBackend]:
    backends = cat.local if policy is TrafficPolicy.LOCAL else cat.cluster
    no_backend = (
        NoBackend.DROP if (policy is TrafficPolicy.LOCAL and cat.has_any) else (NoBackend.REJECT)
    )
    return backends, no_backend


def _skip_reason(service: Service, cfg: TranslateConfig) -> str | None:
    return _not_ours(service, cfg) or _not_proxied(service)


def _not_ours(service: Service, cfg: TranslateConfig) -> str | None:
    """Why this proxy leaves a Service to others by its labels (kube-proxy does not even
    watch such a Service), or None."""
    proxy = service.labels.get(LABEL_SERVICE_PROXY_NAME)
    if proxy is not None and proxy != cfg.proxy_name:
        return (
            f"not proxied: labelled {LABEL_SERVICE_PROXY_NAME}={proxy!r}, so another proxy "
            "serves it"
        )
    if proxy is None and cfg.proxy_name:
        return (
            f"not proxied: this xlb serves only Services labelled {LABEL_SERVICE_PROXY_NAME}="
            f"{cfg.proxy_name!r} (--proxy-name); the cluster's default proxy serves the rest"
        )
    if LABEL_HEADLESS in service.labels:
        return (
            f"not proxied: labelled {LABEL_HEADLESS} (kube-proxy does not even watch such a "
            "Service; DNS serves its endpoints)"
        )
    return None


def _not_proxied(service: Service) -> str | None:
    """Why a Service of ours has nothing to proxy (a DNS name, headless), or None."""
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
    for ip in admitted_external_ips(service, cfg)[0]:
        if family_of(ip) == family:
            out.append((FrontendKind.EXTERNAL_IP, ip))
    if service.type is ServiceType.LOAD_BALANCER:
        out += [
            (FrontendKind.LOAD_BALANCER, ip)
            for ip in service.ingress_ips
            if family_of(ip) == family and ip not in cfg.node_addresses
        ]
    return out


def admitted_external_ips(service: Service, cfg: TranslateConfig) -> tuple[list[str], list[str]]:
    """(the externalIPs served, the reasons the others are not): --external-ips decides,
    and a Node's address is never one (it would take the node's own ports from every pod)."""
    policy = cfg.external_ips
    nets = [ipaddress.ip_network(c, strict=False) for c in policy if c not in ("allow", "deny")]
    served, refused = [], []
    for ip in service.external_ips:
        if ip in cfg.node_addresses:
            refused.append(f"{ip} is a Node's address; an externalIP may not take it")
        elif "deny" in policy:
            refused.append(f"{ip}: externalIPs are denied on this cluster (--external-ips deny)")
        elif nets and not any(ipaddress.ip_address(ip) in n for n in nets):
            allowed = ",".join(policy)
            refused.append(f"{ip} is outside the allowed externalIPs ({allowed})")
        else:
            served.append(ip)
    return served, refused


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
    # the healthCheckNodePort's count: this node's distinct ready endpoint addresses (a pod
    # serving two ports is one endpoint, as kube-proxy counts), the larger family's
    local_ready: dict[str, set[str]] = {}
    for i, sp in enumerate(service.ports):
        if sp.protocol not in cfg.supported_protocols:
            diag.warning(
                f"spec.ports[{i}].protocol",
                f"{sp.protocol} is not supported by xlb's datapath; this port is not "
                "proxied (TCP and UDP are)",
            )
            continue
        for family in families:
            cat = categorize(service, port_endpoints(slices, sp, family), node, cfg.xlb_nodes)
            local_ready.setdefault(family, set()).update(cat.local_ready)
            frontends += _port_frontends(service, sp, family, cat, node, cfg, diag)
    health = None
    if service.health_check_node_port and service.external_traffic_policy is TrafficPolicy.LOCAL:
        count = max((len(ips) for ips in local_ready.values()), default=0)
        health = HealthCheck(service.key, service.health_check_node_port, count)
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
            draining=tuple(b for b in cat.draining if b not in chosen),
            algorithm=_algorithm(service, scope, cfg, diag),
            affinity_timeout=service.session_affinity_timeout,
            no_backend=no_backend,
            # both scopes, as kube-proxy's firewall-check: from outside (XDP), and from the
            # node's processes and pods (the socket hooks mark the socket, sock_egress checks
            # the source its packets leave with)
            source_ranges=(
                service.load_balancer_source_ranges if kind is FrontendKind.LOAD_BALANCER else ()
            ),
            preserve_client_ip=(scope is Scope.EXTERNAL and policy is TrafficPolicy.LOCAL),
            dsr=scope is Scope.EXTERNAL
            and kind is not FrontendKind.CLUSTER_IP
            and policy is not TrafficPolicy.LOCAL  # (its backends are all here)
            and (
                forwarding is Forwarding.DSR
                or (forwarding is Forwarding.HYBRID and sp.protocol is Protocol.TCP)
            ),
        )

    forwarding = _forwarding(service, cfg, diag)

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
FrontendKey = tuple[str, int, Protocol, Scope]


@dataclass
class _Result:
    """A whole translation, kept by Service so that a few changed Services can be patched in:
    what each Service contributes (its frontends once conflicts are settled, its health
    check, its diagnostics), who owns each frontend key, and whether any two Services
    conflicted (then patching is not safe: a change may admit a frontend skipped before)."""

    per_service: dict[str, tuple[tuple[Frontend, ...], HealthCheck | None, tuple[Diagnostic, ...]]]
    owner: dict[FrontendKey, str]
    conflicts: bool
    # (address, port, protocol) -> Service, whatever the scope: what conflicts are judged by
    endpoint_owner: dict[tuple[str, int, Protocol], str] = field(default_factory=dict)

    def state(self, order: list[str], **hints: Any) -> DesiredState:
        rows = [self.per_service[k] for k in order]
        return DesiredState(
            tuple(itertools.chain.from_iterable(r[0] for r in rows)),
            tuple(r[1] for r in rows if r[1]),
            tuple(itertools.chain.from_iterable(r[2] for r in rows)),
            **hints,
        )


def _contribution(
    service: Service, mine: list[EndpointSlice], node: Node | None, cfg: TranslateConfig
) -> _Translated:
    """One Service on its own: its frontends, health check and diagnostics."""
    diag = Collector("Service", service.namespace, service.name)
    reason = _skip_reason(service, cfg)
    if reason:
        diag.info("", reason)
        return [], None, diag.items
    if not service.cluster_ips:
        diag.warning("spec.clusterIP", "no ClusterIP allocated yet; not proxied until it has one")
        return [], None, diag.items
    for reason in admitted_external_ips(service, cfg)[1]:
        diag.error("spec.externalIPs", f"not served: {reason}")
    for ip in service.ingress_ips:
        if ip in cfg.node_addresses:
            diag.error(
                "status.loadBalancer.ingress",
                f"not served: {ip} is a Node's address; a LoadBalancer IP may not take it",
            )
    fes, hc = _translate_service(service, mine, node, cfg, diag)
    return fes, hc, diag.items


# Who keeps a frontend two Services claim: an allocated ClusterIP first, then a NodePort (a
# node's own address), then the oldest object (creationTimestamp, then uid, then name).
_KIND_RANK = {FrontendKind.CLUSTER_IP: 0, FrontendKind.NODE_PORT: 1}


def _claim(fe: Frontend, service: Service) -> tuple:
    return (_KIND_RANK.get(fe.kind, 2), service.created or "~", service.uid, service.key)


def _settle(
    services: Iterable[Service],
    by_service: dict[str, list[EndpointSlice]],
    one: Callable[[Service, list[EndpointSlice]], _Translated],
) -> tuple[_Result, list[str]]:
    """Every Service's contribution, in name order. A frontend key two Services claim goes
    to the stronger claim (_claim: a tenant's externalIP never takes another's ClusterIP,
    a node's address or an older Service's frontend); the other gets an error naming it."""
    result = _Result({}, {}, False)
    order = sorted(services, key=lambda s: s.key)
    contributions = [(s, one(s, by_service.get(s.key, []))) for s in order]
    # by address, port and protocol, whatever the scope: a ClusterIP's address is its
    # Service's from outside too (an externalIP on it would catch what XDP sees)
    best: dict[tuple[str, int, Protocol], tuple] = {}
    for service, (mine, _, _) in contributions:
        for fe in mine:
            claim = _claim(fe, service)
            if fe.key[:3] not in best or claim < best[fe.key[:3]]:
                best[fe.key[:3]] = claim
    for service, (mine, hc, items) in contributions:
        diag = Collector("Service", service.namespace, service.name)
        diag.items.extend(items)
        admitted = []
        reported: set[tuple[str, int, Protocol]] = set()
        for fe in mine:
            winner = best[fe.key[:3]][3]
            if winner != service.key:
                if fe.key[:3] not in reported:
                    reported.add(fe.key[:3])
                    result.conflicts = True
                    diag.error(
                        "",
                        f"{fe.protocol} {fe.endpoint} is already served by Service "
                        f"{winner}; skipped here: give one of them another address or port",
                    )
                continue
            if fe.key in result.owner:
                continue  # the same address twice in one Service (e.g. node IP as externalIP)
            result.owner[fe.key] = service.key
            result.endpoint_owner[fe.key[:3]] = service.key
            admitted.append(fe)
        result.per_service[service.key] = (tuple(admitted), hc, tuple(diag.items))
    return result, [s.key for s in order]


class Translator:
    """translate() that remembers each Service's translation and redoes only the Services a
    snapshot's Changes name (the sources carry them by key: model.snapshot).

    The contract: called with the snapshots of one source in order, each with the Changes
    since the one before, the result equals translate() of the same snapshot. Anything else
    (no Changes, a snapshot skipped, another source, another node or config) costs one whole
    translation, never a wrong one. When few Services changed and no two Services conflict,
    the last result is patched rather than assembled again, and the state says which
    Services changed, so that the sync looks at nothing else. (Node and config are compared
    by value: they are small.)"""

    PATCH_LIMIT = 256  # more changed Services than this: assemble the whole state again

    def __init__(self) -> None:
        self.cache: dict[str, _Translated] = {}
        self.serial = 0
        self.last: _Result | None = None
        self.last_inputs: tuple = ()
        self.order: list[str] = []
        self.taken: tuple[int, int] = (0, -1)  # (lineage, generation) of the last snapshot

    def __call__(
        self,
        services: Iterable[Service],
        slices: Iterable[EndpointSlice],
        node: Node | None,
        config: TranslateConfig | None = None,
        changes: Changes | None = None,
    ) -> DesiredState:
        cfg = config or TranslateConfig()
        changes = changes or EVERYTHING
        follows = changes.follows(*self.taken) and self.last_inputs == (node, cfg)
        self.taken = (changes.lineage, changes.until)
        try:
            return self._translate(list(services), slices, node, cfg, changes, follows)
        except BaseException:
            self.__init__()  # half-patched: the next call starts from nothing
            raise

    def _translate(
        self,
        services: list[Service],
        slices: Iterable[EndpointSlice],
        node: Node | None,
        cfg: TranslateConfig,
        changes: Changes,
        follows: bool,
    ) -> DesiredState:
        by_service = slices_by_service(slices)
        base, self.serial = self.serial, self.serial + 1
        keys = changes.services if follows else None
        if keys is not None and self.last is not None and not self.last.conflicts:
            patched = self._patch(services, by_service, node, cfg, keys)
            if patched is not None:
                return self.last.state(
                    self.order, serial=self.serial, base=base, changed=frozenset(patched)
                )
        if keys is None:
            self.cache.clear()
        else:
            for key in keys:
                self.cache.pop(key, None)
        cache = self.cache

        def one(service: Service, mine: list[EndpointSlice]) -> _Translated:
            out = cache.get(service.key)
            if out is None:
                out = cache[service.key] = _contribution(service, mine, node, cfg)
            return out

        result, self.order = _settle(services, by_service, one)
        live = set(self.order)
        for key in [k for k in cache if k not in live]:
            del cache[key]
        self.last, self.last_inputs = result, (node, cfg)
        return result.state(self.order, serial=self.serial)

    def _patch(
        self,
        services: list[Service],
        by_service: dict[str, list[EndpointSlice]],
        node: Node | None,
        cfg: TranslateConfig,
        keys: frozenset[str],
    ) -> set[str] | None:
        """Patches self.last with the Services named in keys; their names, or None (nothing
        touched) when too many changed or a frontend key would be claimed twice."""
        last = self.last
        assert last is not None
        if len(keys) > self.PATCH_LIMIT:
            return None
        wanted = {s.key: s for s in services if s.key in keys} if keys else {}
        changed = [wanted[k] for k in sorted(wanted)]
        gone = [k for k in keys if k not in wanted and k in last.per_service]
        keys = frozenset(wanted) | frozenset(gone)
        new: dict[str, tuple[list[Frontend], HealthCheck | None, list[Diagnostic]]] = {}
        claimed: dict[FrontendKey, str] = {}
        claimed_endpoints: dict[tuple[str, int, Protocol], str] = {}
        for s in changed:
            out = _contribution(s, by_service.get(s.key, []), node, cfg)
            admitted = []
            for fe in out[0]:
                k3 = fe.key[:3]
                other = claimed_endpoints.get(k3) or last.endpoint_owner.get(k3)
                if other is not None and other not in keys:
                    return None  # another Service has it: the full path settles that
                if other is not None and other != s.key:
                    return None  # two changed Services want it
                if claimed.get(fe.key) == s.key:
                    continue  # twice in one Service
                claimed[fe.key] = s.key
                claimed_endpoints[k3] = s.key
                admitted.append(fe)
            new[s.key] = (admitted, out[1], out[2])
            self.cache[s.key] = out
        for key in keys:  # settled: apply
            old = last.per_service.pop(key, None)
            if old is not None:
                for fe in old[0]:
                    if last.owner.get(fe.key) == key:
                        del last.owner[fe.key]
                    if last.endpoint_owner.get(fe.key[:3]) == key:
                        del last.endpoint_owner[fe.key[:3]]
            if key in new:
                fes, hc, items = new[key]
                last.per_service[key] = (tuple(fes), hc, tuple(items))
                if old is None:
                    bisect.insort(self.order, key)
            else:
                self.cache.pop(key, None)
                self.order.remove(key)
        last.owner.update(claimed)
        last.endpoint_owner.update(claimed_endpoints)
        return set(keys)


def translate(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    node: Node | None,
    config: TranslateConfig | None = None,
    changes: Changes | None = None,
) -> DesiredState:
    """The frontends this node must serve. Problems with one Service become diagnostics and
    never affect another Service. (changes: unused, every Service is translated; taken so
    that translate and a Translator are called alike.)"""
    cfg = config or TranslateConfig()
    result, order = _settle(
        services, slices_by_service(slices), lambda s, mine: _contribution(s, mine, node, cfg)
    )
    return result.state(order)


def with_address_space(
    state: DesiredState,
    services: Iterable[Service],
    service_cidrs: Iterable[str],
    config: TranslateConfig | None = None,
    changes: Changes | None = None,
) -> DesiredState:
    """The state with the cluster's service address space (kube-proxy's cluster-ips-check):
    the ClusterIPs of the Services this proxy watches (another proxy's, by the labels, are
    not: kube-proxy never sees them), allocated whether or not this node serves a frontend
    of theirs, and the service CIDRs they come from. A CIDR that is no network is left out
    here: the source reported it. Canonical text throughout (a full-length prefix as its
    address alone), as the sync compares what the map holds by it. (changes: unused, as
    translate's.)"""
    cfg = config or TranslateConfig()
    cidrs = []
    for c in service_cidrs:
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(c, strict=False)
            whole = net.prefixlen == net.max_prefixlen
            cidrs.append(str(net.network_address) if whole else str(net))
    return dataclasses.replace(
        state,
        cluster_ips=frozenset(
            ip for s in services if _not_ours(s, cfg) is None for ip in s.cluster_ips
        ),
        service_cidrs=tuple(dict.fromkeys(cidrs)),
        node_addresses=cfg.node_addresses,
    )


class AddressSpace:
    """with_address_space, remembering its last ClusterIPs: a snapshot whose Changes name no
    Service and follow the last one's reuses them instead of walking 10,000 Services again
    (0.4 ms at 10,000). Anything else walks them all (the contract of Translator)."""

    def __init__(self) -> None:
        self.config: TranslateConfig | None = None
        self.cluster_ips: frozenset[str] | None = None
        self.taken: tuple[int, int] = (0, -1)

    def __call__(
        self,
        state: DesiredState,
        services: Iterable[Service],
        service_cidrs: Iterable[str],
        config: TranslateConfig | None = None,
        changes: Changes | None = None,
    ) -> DesiredState:
        changes = changes or EVERYTHING
        same = (
            changes.follows(*self.taken)
            and not changes.services
            and config == self.config
            and self.cluster_ips is not None
        )
        self.taken = (changes.lineage, changes.until)
        if same:
            spaced = with_address_space(state, (), service_cidrs, config)
            return dataclasses.replace(spaced, cluster_ips=self.cluster_ips)
        spaced = with_address_space(state, services, service_cidrs, config)
        self.config, self.cluster_ips = config, spaced.cluster_ips
        return spaced
