"""A simulated Kubernetes control plane: what kube-apiserver and its controllers would do for
a manifest-only cluster, as pure functions. It is not Kubernetes, and nothing here runs when
the agent reads a real API server.

With no API server (standalone mode, the lab), somebody must do what it and its controllers do:
allocate ClusterIPs and NodePorts, place pods on nodes and give them IPs, and compute
EndpointSlices from selectors. Every allocation is a function of the objects alone (hash-based
with probing, fixed requests first), so every node's agent, reading the same files, arrives at
exactly the same cluster.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, replace

from ..model.diagnostics import Collector, Diagnostic
from ..model.objects import (
    ANNOTATION_TOPOLOGY_HINTS,
    ANNOTATION_TOPOLOGY_MODE,
    LABEL_ZONE,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Family,
    Node,
    Pod,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)
from ..model.parse import family_of


@dataclass(frozen=True)
class ClusterConfig:
    # Manifests written for kubeadm (10.96.0.0/12) and for kubeasz (10.68.0.0/16) both work:
    # fixed ClusterIPs may come from any range, new ones come from the first of their family.
    service_cidrs: tuple[str, ...] = ("10.96.0.0/12", "10.68.0.0/16", "fd00:10:96::/112")
    pod_cidrs: tuple[str, ...] = ("10.244.0.0/16", "fd00:10:244::/56")
    node_port_range: tuple[int, int] = (30000, 32767)
    nodes: int = 2  # synthesised when the manifests hold no Node
    node_lan: tuple[str, ...] = ("192.168.198.0/24", "fd00:198::/64")
    first_node_host: int = 201  # node-1 is .201, clear of the example externalIPs
    pools: tuple = ()  # LoadBalancer pools from the config (--pool), beside the manifests'

    @property
    def families(self) -> tuple[Family, ...]:
        fams = [family_of(str(ipaddress.ip_network(c).network_address)) for c in self.service_cidrs]
        return tuple(dict.fromkeys(fams))


def _digest(*parts: object) -> int:
    text = "\x00".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def synthesize_nodes(cfg: ClusterConfig) -> list[Node]:
    nodes = []
    lans = [ipaddress.ip_network(c) for c in cfg.node_lan]
    for i in range(cfg.nodes):
        addrs = tuple(str(lan.network_address + cfg.first_node_host + i) for lan in lans)
        nodes.append(
            Node(
                name=f"node-{i + 1}",
                addresses=addrs,
                labels={LABEL_ZONE: f"zone-{'ab'[i % 2]}"},
                pod_cidrs=node_pod_cidrs(cfg, i),
            )
        )
    return nodes


def node_pod_cidrs(cfg: ClusterConfig, index: int) -> tuple[str, ...]:
    """Node i (from 0) gets subnet i+1, a /24 (IPv4) or /64 (IPv6), of each cluster pod CIDR:
    node-1 has 10.244.1.0/24, as the examples in most tutorials show."""
    out = []
    for cidr in cfg.pod_cidrs:
        net = ipaddress.ip_network(cidr)
        prefix = 24 if net.version == 4 else 64
        step = 1 << (net.max_prefixlen - prefix)
        out.append(
            str(ipaddress.ip_network((int(net.network_address) + (index + 1) * step, prefix)))
        )
    return tuple(out)


# -- the API server's allocators ---------------------------------------------------------------


def _oldest_first(svc: Service) -> tuple[str, str]:
    """The order the allocators serve claims in: the older object first, as the API server
    admitted them (creationTimestamp; manifests without one, by name)."""
    return (svc.created, svc.key)


class _IPAllocator:
    def __init__(self, cfg: ClusterConfig) -> None:
        self.ranges = [ipaddress.ip_network(c) for c in cfg.service_cidrs]
        self.used: dict[str, str] = {}  # ip -> owner

    def contains(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in r for r in self.ranges)

    def take(self, ip: str, owner: str) -> str | None:
        """Claims a fixed IP; returns the current owner on conflict."""
        other = self.used.setdefault(ip, owner)
        return other if other != owner else None

    def allocate(self, family: Family, owner: str) -> str | None:
        net = next((r for r in self.ranges if (r.version == 6) == (family is Family.IPv6)), None)
        if net is None:
            return None
        size = min(net.num_addresses - 2, 1 << 20)  # skip network address and the .1 (kubernetes)
        start = _digest(owner, family) % size
        for k in range(size):
            ip = str(net.network_address + 2 + (start + k) % size)
            if ip not in self.used:
                self.used[ip] = owner
                return ip
        return None


def _service_families(svc: Service, cfg: ClusterConfig, diag: Collector) -> list[Family] | None:
    cluster_fams = cfg.families
    fams = list(svc.ip_families) or [family_of(ip) for ip in svc.cluster_ips] or [cluster_fams[0]]
    policy = svc.ip_family_policy or "SingleStack"
    if policy != "SingleStack" and len(fams) == 1 and len(cluster_fams) > 1:
        fams.append(next(f for f in cluster_fams if f != fams[0]))
    if policy == "RequireDualStack" and len(cluster_fams) < 2:
        diag.error(
            "spec.ipFamilyPolicy",
            "RequireDualStack, but the cluster has one IP family; "
            "use PreferDualStack or configure an IPv6 service CIDR",
        )
        return None
    if policy == "SingleStack":
        fams = fams[:1]
    for i, fam in enumerate(fams):
        if fam not in cluster_fams:
            diag.error(
                f"spec.ipFamilies[{i}]",
                f"{fam} is not configured in this cluster "
                f"(service CIDRs: {', '.join(cfg.service_cidrs)})",
            )
            return None
    return fams


def allocate_cluster_ips(
    services: list[Service], cfg: ClusterConfig
) -> tuple[list[Service], list[Diagnostic]]:
    """Fill in ClusterIPs and families as the API server would; reject conflicts and addresses
    outside the service CIDRs. Fixed requests are honoured before anything is allocated."""
    alloc = _IPAllocator(cfg)
    diags: list[Diagnostic] = []
    rejected: set[str] = set()
    ordered = sorted(services, key=_oldest_first)
    for svc in ordered:
        diag = Collector("Service", svc.namespace, svc.name)
        for i, ip in enumerate(svc.cluster_ips):
            if not alloc.contains(ip):
                diag.error(
                    f"spec.clusterIPs[{i}]",
                    f"{ip} is not in the service CIDRs ({', '.join(cfg.service_cidrs)}); "
                    "pick an address in them or leave clusterIP empty",
                )
            elif other := alloc.take(ip, svc.key):
                diag.error(
                    f"spec.clusterIPs[{i}]",
                    f"{ip} is already allocated to Service {other}; pick another address "
                    "or leave clusterIP empty",
                )
        if diag.has_errors:
            rejected.add(svc.key)
        diags += diag.items
    out: list[Service] = []
    for svc in ordered:
        if svc.key in rejected:
            continue
        if svc.type is ServiceType.EXTERNAL_NAME or svc.headless:
            out.append(svc)
            continue
        diag = Collector("Service", svc.namespace, svc.name)
        fams = _service_families(svc, cfg, diag)
        if fams is None:
            diags += diag.items
            continue
        have = {family_of(ip): ip for ip in svc.cluster_ips}
        ips = []
        for fam in fams:
            ip = have.get(fam) or alloc.allocate(fam, svc.key)
            if ip is None:
                diag.error("spec.clusterIP", f"the {fam} service CIDR is full")
                break
            ips.append(ip)
        diags += diag.items
        if not diag.has_errors:
            out.append(replace(svc, cluster_ips=tuple(ips), ip_families=tuple(fams)))
    return out, diags


def allocate_node_ports(
    services: list[Service], cfg: ClusterConfig
) -> tuple[list[Service], list[Diagnostic]]:
    """Fill in nodePorts and healthCheckNodePorts from the NodePort range; a Service whose
    requested port is out of range or taken is rejected, as `kubectl apply` would be."""
    lo, hi = cfg.node_port_range
    used: dict[int, str] = {}
    diags: list[Diagnostic] = []
    rejected: set[str] = set()
    ordered = sorted(services, key=_oldest_first)

    def wants_ports(svc: Service) -> bool:
        return svc.type is ServiceType.NODE_PORT or (
            svc.type is ServiceType.LOAD_BALANCER and svc.allocate_lb_node_ports
        )

    for svc in ordered:  # fixed requests first
        diag = Collector("Service", svc.namespace, svc.name)
        fixed = [
            (f"spec.ports[{i}].nodePort", p.node_port)
            for i, p in enumerate(svc.ports)
            if p.node_port
        ]
        if svc.health_check_node_port:
            fixed.append(("spec.healthCheckNodePort", svc.health_check_node_port))
        for where, port in fixed:
            if not lo <= port <= hi:
                diag.error(
                    where,
                    f"{port} is outside the NodePort range {lo}-{hi}; remove "
                    f"nodePort to have one allocated, or pick a port in {lo}-{hi}",
                )
            elif used.setdefault(port, svc.key) != svc.key:
                diag.error(
                    where,
                    f"{port} is already allocated to Service {used[port]}; remove "
                    "nodePort to have one allocated, or pick a free port",
                )
        if diag.has_errors:
            rejected.add(svc.key)
        diags += diag.items

    def allocate(owner: str, *salt: object) -> int:
        size = hi - lo + 1
        start = _digest(owner, *salt) % size
        for k in range(size):
            port = lo + (start + k) % size
            if port not in used:
                used[port] = owner
                return port
        raise RuntimeError(f"NodePort range {lo}-{hi} is full")

    out: list[Service] = []
    for svc in ordered:
        if svc.key in rejected:
            continue
        if not wants_ports(svc):
            out.append(svc)
            continue
        ports: list[ServicePort] = []
        by_number: dict[int, int] = {}  # TCP and UDP on one port number share the nodePort
        for p in svc.ports:
            node_port = (
                p.node_port or by_number.get(p.port) or allocate(svc.key, p.name, p.protocol)
            )
            by_number.setdefault(p.port, node_port)
            ports.append(replace(p, node_port=node_port))
        hc = svc.health_check_node_port
        if (
            not hc
            and svc.type is ServiceType.LOAD_BALANCER
            and svc.external_traffic_policy is TrafficPolicy.LOCAL
        ):
            hc = allocate(svc.key, "healthCheckNodePort")
        out.append(replace(svc, ports=tuple(ports), health_check_node_port=hc))
    return out, diags


def assign_load_balancer_ips(
    services: list[Service], pools: list | None = None
) -> tuple[list[Service], list[Diagnostic]]:
    """Standalone stand-in for a LoadBalancer controller: addresses from the pools (see
    model/pools.py); with no pool at all, a requested spec.loadBalancerIP is taken as is."""
    from ..model.pools import allocate

    current = {s.key: s.ingress_ips for s in services if s.ingress_ips}
    assigned, diags = allocate(services, pools or [], current)
    out = [
        replace(s, ingress_ips=assigned.get(s.key, ()))
        if s.type is ServiceType.LOAD_BALANCER
        else s
        for s in services
    ]
    return out, diags


# -- the scheduler and the kubelet: where pods run and which IPs they get -----------------------


def place_pods(pods: list[Pod], nodes: list[Node]) -> tuple[list[Pod], list[Diagnostic]]:
    """Give every pod a node (if it has none) and an IP of each family from its node's pod CIDRs.
    Placement spreads a Deployment's replicas round-robin from a per-Deployment start; IPs are
    hash-chosen with probing, so adding a pod never moves another."""
    diags: list[Diagnostic] = []
    by_name = {n.name: n for n in nodes}
    used: set[str] = {ip for p in pods for ip in p.ips}
    out: list[Pod] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        node_name = pod.node_name
        if not node_name:
            if not nodes:
                continue
            start = _digest(pod.namespace, pod.owner or pod.name)
            node_name = nodes[(start + pod.ordinal) % len(nodes)].name
        node = by_name.get(node_name)
        if node is None:
            diag = Collector("Pod", pod.namespace, pod.name)
            diag.error("spec.nodeName", f"no Node named {node_name!r}; the pod is not run")
            diags += diag.items
            continue
        ips = list(pod.ips)
        have = {family_of(ip) for ip in ips}
        for cidr in node.pod_cidrs:
            net = ipaddress.ip_network(cidr)
            fam = Family.IPv6 if net.version == 6 else Family.IPv4
            if fam in have:
                continue
            size = min(net.num_addresses - 2, 1 << 16) - 1  # .1 is the node's own gateway
            start = _digest(pod.namespace, pod.name) % size
            for k in range(size):
                ip = str(net.network_address + 2 + (start + k) % size)
                if ip not in used:
                    used.add(ip)
                    ips.append(ip)
                    break
        out.append(replace(pod, node_name=node_name, ips=tuple(ips)))
    return out, diags


# -- the EndpointSlice controller -----------------------------------------------------------------


def _resolve_port(sp: ServicePort, pod: Pod) -> int | None:
    if isinstance(sp.target_port, int):
        return sp.target_port
    for cp in pod.ports:
        if cp.name == sp.target_port and cp.protocol == sp.protocol:
            return cp.port
    return None


def endpoint_slices_for(
    svc: Service, pods: list[Pod], nodes: list[Node]
) -> tuple[list[EndpointSlice], list[Diagnostic]]:
    """Slices for a Service with a selector: one per (family, resolved port set), since named
    targetPorts may resolve to different numbers on different pods. Hints as the
    EndpointSlice controller writes them (see hints_for)."""
    assert svc.selector is not None
    diag = Collector("Service", svc.namespace, svc.name)
    zones = {n.name: n.zone for n in nodes}
    if _topology_auto(svc) and svc.traffic_distribution:
        diag.info(
            "metadata.annotations",
            "topology-mode Auto takes precedence over spec.trafficDistribution in the "
            "EndpointSlice controller; its proportional hints are not modelled here, so no "
            "hints are written and traffic is spread cluster-wide",
        )
    selected = [
        p
        for p in pods
        if p.namespace == svc.namespace
        and not p.terminal  # the controller's ShouldPodBeInEndpoints
        and all(p.labels.get(k) == v for k, v in svc.selector.items())
    ]
    groups: dict[tuple[str, tuple[tuple[str, int, Protocol], ...]], list[Endpoint]] = {}
    for i, sp in enumerate(svc.ports):
        if (
            isinstance(sp.target_port, str)
            and selected
            and not any(_resolve_port(sp, p) for p in selected)
        ):
            diag.warning(
                f"spec.ports[{i}].targetPort",
                f"no selected pod has a container port named {sp.target_port!r} "
                f"({sp.protocol}); name the port in the pod template or use a number",
            )
    for pod in selected:
        resolved = tuple(
            (sp.name, port, sp.protocol)
            for sp in svc.ports
            if (port := _resolve_port(sp, pod)) is not None
        )
        if not resolved:
            continue
        # the EndpointSlice controller's podToEndpoint: publishNotReadyAddresses makes the
        # endpoint ready and serving, even while its pod terminates
        serving = pod.ready or svc.publish_not_ready
        for ip in pod.ips:
            ep = Endpoint(
                addresses=(ip,),
                ready=svc.publish_not_ready or (serving and not pod.terminating),
                serving=serving,
                terminating=pod.terminating,
                node_name=pod.node_name,
                zone=zones.get(pod.node_name, ""),
                target=pod.name,
            )
            ep = hints_for(svc, ep)
            groups.setdefault((family_of(ip), resolved), []).append(ep)
    slices = []
    for (fam, resolved), eps in sorted(groups.items()):
        tag = _digest(svc.key, fam, resolved) % (36**5)
        slices.append(
            EndpointSlice(
                namespace=svc.namespace,
                name=f"{svc.name}-{_base36(tag)}",
                service_name=svc.name,
                address_type=fam,
                endpoints=tuple(sorted(eps, key=lambda e: e.addresses)),
                ports=tuple(EndpointPort(n, p, pr) for n, p, pr in resolved),
            )
        )
    return slices, diag.items


def _topology_auto(svc: Service) -> bool:
    mode = svc.annotations.get(
        ANNOTATION_TOPOLOGY_MODE, svc.annotations.get(ANNOTATION_TOPOLOGY_HINTS, "")
    )
    return mode in ("Auto", "auto")


def hints_for(svc: Service, ep: Endpoint) -> Endpoint:
    """The hints kube-controller-manager's EndpointSlice controller gives ep (its trafficdist
    heuristics): under PreferClose / PreferSameZone a ready endpoint is hinted for its own
    zone, under PreferSameNode for its own node and zone; otherwise no hints. An endpoint
    that is not ready keeps none. (topology-mode Auto's proportional hints: not modelled.)"""
    close = svc.traffic_distribution in ("PreferClose", "PreferSameZone", "PreferSameNode")
    if not close or _topology_auto(svc) or not ep.ready:
        return replace(ep, zone_hints=(), node_hints=())
    same_node = svc.traffic_distribution == "PreferSameNode"
    return replace(
        ep,
        zone_hints=(ep.zone,) if ep.zone else (),
        node_hints=(ep.node_name,) if same_node and ep.node_name else (),
    )


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(5):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out
