"""Kubernetes-shaped dicts (API JSON or YAML manifests) to typed objects, validated.

Validation follows the API server's rules where a service proxy depends on them, so that a
hand-written manifest gets the error `kubectl apply` would have given, naming the field.
An object with an error is returned as None; the caller keeps every other object.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from . import schema
from .diagnostics import Collector, Diagnostic
from .objects import (
    DEFAULT_AFFINITY_TIMEOUT,
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    MAX_AFFINITY_TIMEOUT,
    TAINT_TO_BE_DELETED,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Family,
    Node,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)

_IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"


def family_of(address: str) -> Family:
    """The IP family of a literal address; raises ValueError for anything else."""
    return Family.IPv6 if ipaddress.ip_address(address).version == 6 else Family.IPv4


def special_address(ip: str) -> str | None:
    """Why the API server refuses ip as an externalIP or an endpoint (its ValidateNonSpecialIP
    rule), or None: a special address would hijack the node's own traffic."""
    a = ipaddress.ip_address(ip)
    if a.is_unspecified:
        return "may not be unspecified (0.0.0.0, ::)"
    if a.is_loopback:
        return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if a.is_link_local:
        return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    # as Go's IP.IsLinkLocalMulticast, which the API server calls: 224.0.0.0/24, ffX2::/16
    if (a.version == 4 and a in ipaddress.ip_network("224.0.0.0/24")) or (
        a.version == 6 and a.packed[0] == 0xFF and a.packed[1] & 0x0F == 0x02
    ):
        return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
    return None


def _ip(value: Any) -> str | None:
    """Canonical text of an IP address, or None. Leading zeros are rejected as the API does."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _cidr(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _meta(obj: dict[str, Any], kind: str) -> tuple[str, str, dict[str, Any]]:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    return namespace, name, meta


def parse_service(
    obj: dict[str, Any], strict: bool = False
) -> tuple[Service | None, list[Diagnostic]]:
    namespace, name, meta = _meta(obj, "Service")
    diag = Collector("Service", namespace, name or "<unnamed>")
    if not name:
        diag.error("metadata.name", "required; give the Service a name")
        return None, diag.items
    if strict:
        schema.check_fields(obj, schema.SERVICE, diag)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        diag.error("spec", "required; a Service needs a spec with ports")
        return None, diag.items

    raw_type = spec.get("type") or "ClusterIP"
    try:
        svc_type = ServiceType(raw_type)
    except ValueError:
        diag.error(
            "spec.type",
            f"unsupported value {raw_type!r}; use one of "
            "ClusterIP, NodePort, LoadBalancer, ExternalName",
        )
        return None, diag.items

    labels = _str_map(meta.get("labels"))
    annotations = _str_map(meta.get("annotations"))

    if svc_type is ServiceType.EXTERNAL_NAME:
        return _parse_external_name(spec, namespace, name, labels, annotations, diag)

    cluster_ips, headless, families = _parse_cluster_ips(spec, diag)
    ports = _parse_ports(spec, svc_type, headless, diag)
    affinity = _parse_affinity(spec, diag)

    external_ips: list[str] = []
    for i, raw in enumerate(spec.get("externalIPs") or []):
        ip = _ip(raw)
        if ip is None:
            diag.error(f"spec.externalIPs[{i}]", f"{raw!r} is not a valid IP address")
        elif strict and special_address(ip):
            diag.error(f"spec.externalIPs[{i}]", f"{ip} {special_address(ip)}")
        else:
            external_ips.append(ip)

    etp = _traffic_policy(spec, "externalTrafficPolicy", diag)
    if (
        "externalTrafficPolicy" in spec
        and spec["externalTrafficPolicy"]
        and not (svc_type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER) or external_ips)
    ):
        diag.error(
            "spec.externalTrafficPolicy",
            "may only be set for externally-accessible Services "
            "(type NodePort or LoadBalancer, or with externalIPs); remove it",
        )
    itp = _traffic_policy(spec, "internalTrafficPolicy", diag)

    hc_port = _int(spec.get("healthCheckNodePort")) or 0
    if hc_port and not (svc_type is ServiceType.LOAD_BALANCER and etp is TrafficPolicy.LOCAL):
        diag.error(
            "spec.healthCheckNodePort",
            "may only be set when type is LoadBalancer and externalTrafficPolicy is "
            "Local; remove it",
        )
    if hc_port and not 1 <= hc_port <= 65535:
        diag.error("spec.healthCheckNodePort", f"{hc_port} is not a valid port number")

    lb_ip = ""
    if spec.get("loadBalancerIP"):
        lb_ip = _ip(spec["loadBalancerIP"]) or ""
        if not lb_ip:
            diag.error("spec.loadBalancerIP", f"{spec['loadBalancerIP']!r} is not an IP address")
        elif svc_type is not ServiceType.LOAD_BALANCER:
            diag.warning("spec.loadBalancerIP", "ignored: the Service is not type LoadBalancer")

    source_ranges = _parse_source_ranges(spec, annotations, diag)
    ingress = _parse_ingress(obj.get("status"), diag)

    if diag.has_errors:
        return None, diag.items
    selector = spec.get("selector")
    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ip_families=families,
        ip_family_policy=str(spec.get("ipFamilyPolicy") or ""),
        ports=ports,
        selector=_str_map(selector) if isinstance(selector, dict) and selector else None,
        external_ips=tuple(external_ips),
        load_balancer_ip=lb_ip,
        ingress_ips=ingress,
        load_balancer_source_ranges=source_ranges,
        load_balancer_class=str(spec.get("loadBalancerClass") or ""),
        session_affinity_timeout=affinity,
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        health_check_node_port=hc_port,
        allocate_lb_node_ports=spec.get("allocateLoadBalancerNodePorts") is not False,
        publish_not_ready=spec.get("publishNotReadyAddresses") is True,
        traffic_distribution=_traffic_distribution(spec.get("trafficDistribution"), diag),
        labels=labels,
        annotations=annotations,
        created=str(meta.get("creationTimestamp") or ""),
        uid=str(meta.get("uid") or ""),
    ), diag.items


TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")


def _traffic_distribution(raw: Any, diag: Collector) -> str:
    """spec.trafficDistribution, which only the EndpointSlice controller reads (it writes the
    hints the proxy follows); a value kube-apiserver 1.35 would refuse is ignored, said once."""
    if raw is None or raw == "":
        return ""
    if raw not in TRAFFIC_DISTRIBUTIONS:
        diag.warning(
            "spec.trafficDistribution",
            f"{raw!r} ignored: Unsupported value (supported: {', '.join(TRAFFIC_DISTRIBUTIONS)}); "
            "traffic is spread cluster-wide",
        )
        return ""
    return str(raw)


def _parse_external_name(
    spec: dict[str, Any],
    namespace: str,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    diag: Collector,
) -> tuple[Service | None, list[Diagnostic]]:
    external_name = str(spec.get("externalName") or "")
    if not external_name or not _DNS1123_SUBDOMAIN.match(external_name.rstrip(".").lower()):
        diag.error(
            "spec.externalName",
            f"{external_name!r} must be a DNS name (e.g. my.database.example.com)",
        )
    affinity = spec.get("sessionAffinity") or "None"
    if affinity != "None":
        diag.error(
            "spec.sessionAffinity",
            f"{affinity!r} must be None when type is ExternalName: an ExternalName Service "
            "is a DNS CNAME and no proxy sees its connections; remove sessionAffinity",
        )
    if spec.get("externalIPs"):
        diag.info(
            "spec.externalIPs",
            "ignored: ExternalName Services are answered by DNS (a CNAME) and never proxied",
        )
    if diag.has_errors:
        return None, diag.items
    return Service(
        namespace=namespace,
        name=name,
        type=ServiceType.EXTERNAL_NAME,
        external_name=external_name,
        labels=labels,
        annotations=annotations,
    ), diag.items


def _parse_cluster_ips(
    spec: dict[str, Any], diag: Collector
) -> tuple[tuple[str, ...], bool, tuple[Family, ...]]:
    raw_ip = spec.get("clusterIP")
    raw_ips = spec.get("clusterIPs") or ([raw_ip] if raw_ip else [])
    if raw_ip and raw_ips and raw_ips[0] != raw_ip:
        diag.error("spec.clusterIPs[0]", f"{raw_ips[0]!r} must equal spec.clusterIP {raw_ip!r}")
    headless = raw_ip == "None" or raw_ips[:1] == ["None"]
    ips: list[str] = []
    if not headless:
        for i, raw in enumerate(raw_ips):
            ip = _ip(raw)
            if ip is None:
                diag.error(
                    f"spec.clusterIPs[{i}]",
                    f"{raw!r} is not a valid IP address; use an address from the service "
                    'CIDR, "None" for a headless Service, or leave it empty',
                )
            else:
                ips.append(ip)
    families: list[Family] = []
    for i, raw in enumerate(spec.get("ipFamilies") or []):
        try:
            families.append(Family(raw))
        except ValueError:
            diag.error(f"spec.ipFamilies[{i}]", f"{raw!r} is not IPv4 or IPv6")
    if len(set(families)) != len(families):
        diag.error("spec.ipFamilies", "lists a family twice")
    policy = spec.get("ipFamilyPolicy") or ""
    if policy not in ("", "SingleStack", "PreferDualStack", "RequireDualStack"):
        diag.error(
            "spec.ipFamilyPolicy",
            f"{policy!r}: use SingleStack, PreferDualStack or RequireDualStack",
        )
    if policy == "SingleStack" and (len(families) > 1 or len(ips) > 1):
        diag.error(
            "spec.ipFamilyPolicy",
            "SingleStack allows one family; set PreferDualStack or RequireDualStack",
        )
    ip_families = [family_of(ip) for ip in ips]
    if len(set(ip_families)) != len(ip_families):
        diag.error(
            "spec.clusterIPs",
            "two addresses of the same family; a Service has at most one address per family",
        )
    for i, (fam, ip) in enumerate(zip(families, ip_families, strict=False)):
        if fam != ip:
            diag.error(f"spec.ipFamilies[{i}]", f"{fam} does not match clusterIPs[{i}] ({ip})")
    if not families:
        families = ip_families
    return tuple(ips), headless, tuple(families)


def _parse_ports(
    spec: dict[str, Any], svc_type: ServiceType, headless: bool, diag: Collector
) -> tuple[ServicePort, ...]:
    raw_ports = spec.get("ports") or []
    if not isinstance(raw_ports, list):
        diag.error("spec.ports", "must be a list of ports")
        return ()
    if not raw_ports and not headless:
        diag.error("spec.ports", "required: list at least one port (e.g. - port: 80)")
    ports: list[ServicePort] = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for i, raw in enumerate(raw_ports):
        at = f"spec.ports[{i}]"
        if not isinstance(raw, dict):
            diag.error(at, "must be a mapping with at least `port`")
            continue
        port = _int(raw.get("port"))
        if port is None or not 1 <= port <= 65535:
            diag.error(f"{at}.port", f"{raw.get('port')!r} must be a port number 1-65535")
            continue
        pname = str(raw.get("name") or "")
        if len(raw_ports) > 1 and not pname:
            diag.error(f"{at}.name", "required when a Service has more than one port")
        elif pname and not _DNS1123_LABEL.match(pname):
            diag.error(f"{at}.name", f"{pname!r} must be a lowercase DNS label (e.g. http)")
        if pname in seen_names:
            diag.error(f"{at}.name", f"duplicate port name {pname!r}")
        seen_names.add(pname)
        raw_proto = raw.get("protocol") or "TCP"
        try:
            proto = Protocol(raw_proto)
        except ValueError:
            diag.error(f"{at}.protocol", f"{raw_proto!r}: use TCP, UDP or SCTP")
            continue
        if (port, proto) in seen_ports:
            diag.error(at, f"duplicate {proto} port {port}")
        seen_ports.add((port, proto))
        target = raw.get("targetPort", port)
        if target in (None, "", 0):
            target = port
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            diag.error(f"{at}.targetPort", f"{target!r} must be a port number or a port name")
            continue
        if isinstance(target, int) and not 1 <= target <= 65535:
            diag.error(f"{at}.targetPort", f"{target} must be a port number 1-65535")
        elif isinstance(target, str) and not _IANA_SVC_NAME.match(target):
            diag.error(
                f"{at}.targetPort",
                f"{target!r} is not a valid port name (lowercase, "
                "at most 15 characters, e.g. http)",
            )
        node_port = _int(raw.get("nodePort")) if raw.get("nodePort") else None
        if raw.get("nodePort") and node_port is None:
            diag.error(f"{at}.nodePort", f"{raw.get('nodePort')!r} must be a port number")
        if node_port and svc_type is ServiceType.CLUSTER_IP:
            diag.error(f"{at}.nodePort", "may only be set when type is NodePort or LoadBalancer")
        ports.append(ServicePort(pname, proto, port, target, node_port))
    return tuple(ports)


def _parse_affinity(spec: dict[str, Any], diag: Collector) -> int:
    mode = spec.get("sessionAffinity") or "None"
    if mode not in ("None", "ClientIP"):
        diag.error("spec.sessionAffinity", f"{mode!r}: use None or ClientIP")
        return 0
    cfg = spec.get("sessionAffinityConfig") or {}
    timeout_raw = ((cfg.get("clientIP") or {}) if isinstance(cfg, dict) else {}).get(
        "timeoutSeconds"
    )
    if mode == "None":
        if timeout_raw is not None:
            diag.warning(
                "spec.sessionAffinityConfig",
                "ignored: sessionAffinity is None; set sessionAffinity: ClientIP",
            )
        return 0
    if timeout_raw is None:
        return DEFAULT_AFFINITY_TIMEOUT
    timeout = _int(timeout_raw)
    if timeout is None or not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        diag.error(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"{timeout_raw!r} must be between 1 and {MAX_AFFINITY_TIMEOUT} seconds",
        )
        return 0
    return timeout


def _traffic_policy(spec: dict[str, Any], key: str, diag: Collector) -> TrafficPolicy:
    raw = spec.get(key) or "Cluster"
    if raw == "Global":  # the pre-1.22 spelling, still accepted by the API server
        return TrafficPolicy.CLUSTER
    try:
        return TrafficPolicy(raw)
    except ValueError:
        diag.error(f"spec.{key}", f"{raw!r}: use Cluster or Local")
        return TrafficPolicy.CLUSTER


def _parse_source_ranges(
    spec: dict[str, Any], annotations: dict[str, str], diag: Collector
) -> tuple[str, ...]:
    raw = spec.get("loadBalancerSourceRanges") or []
    where = "spec.loadBalancerSourceRanges"
    if not raw and annotations.get(_SOURCE_RANGES_ANNOTATION):
        raw = annotations[_SOURCE_RANGES_ANNOTATION].split(",")
        where = f"metadata.annotations[{_SOURCE_RANGES_ANNOTATION}]"
    out: list[str] = []
    for i, value in enumerate(raw):
        cidr = _cidr(value)
        if cidr is None:
            diag.error(f"{where}[{i}]", f"{value!r} is not a CIDR (e.g. 203.0.113.0/24)")
        else:
            out.append(cidr)
    return tuple(out)


def _parse_ingress(status: Any, diag: Collector) -> tuple[str, ...]:
    if not isinstance(status, dict):
        return ()
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    out: list[str] = []
    for i, entry in enumerate(ingress):
        if not isinstance(entry, dict) or not entry.get("ip"):
            continue  # hostname-only ingress (cloud LBs) is not an address a proxy can own
        ip = _ip(entry["ip"])
        if ip is None:
            diag.warning(
                f"status.loadBalancer.ingress[{i}].ip",
                f"{entry['ip']!r} ignored: not an IP address",
            )
        elif entry.get("ipMode") == "Proxy":
            # The load balancer in front rewrites the destination; the node must not capture it.
            continue
        else:
            out.append(ip)
    return tuple(out)


def _conditions(raw: Any) -> tuple[bool, bool, bool]:
    cond = raw if isinstance(raw, dict) else {}
    ready = cond.get("ready") is not False  # nil means ready
    serving = cond.get("serving") is not False  # nil means serving (as kube-proxy reads it)
    terminating = cond.get("terminating") is True
    return ready, serving, terminating


def _hints(raw: Any, at: str, diag: Collector) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An endpoint's hints: (forZones names, forNodes names). A malformed list is one warning
    and no hints of that kind, which turns topology off for the whole Service (hints are
    all-or-nothing), the safe reading of what the API server would have refused."""
    if raw is None:
        return (), ()
    if not isinstance(raw, dict):
        diag.warning(at, f"{raw!r} ignored: hints must be a mapping (forZones, forNodes)")
        return (), ()
    out: list[tuple[str, ...]] = []
    for key in ("forZones", "forNodes"):
        items = raw.get(key)
        names: list[str] = []
        if items is not None and not isinstance(items, list):
            diag.warning(f"{at}.{key}", f"{items!r} ignored: must be a list of {{name: ...}}")
            items = []
        for j, item in enumerate(items or []):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                diag.warning(f"{at}.{key}[{j}]", f"{item!r} ignored: needs a non-empty `name`")
                names = []
                break
            names.append(name)
        out.append(tuple(names))
    return out[0], out[1]


def _target_name(ref: Any) -> str:
    return str(ref.get("name", "")) if isinstance(ref, dict) else ""


def _parse_endpoint_ports(raw: Any, at: str, diag: Collector) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    for i, p in enumerate(raw or []):
        if not isinstance(p, dict):
            diag.error(f"{at}[{i}]", "must be a mapping with `port`")
            continue
        port = _int(p.get("port"))
        if port is None or not 1 <= port <= 65535:
            diag.error(f"{at}[{i}].port", f"{p.get('port')!r} must be a port number 1-65535")
            continue
        try:
            proto = Protocol(p.get("protocol") or "TCP")
        except ValueError:
            diag.error(f"{at}[{i}].protocol", f"{p.get('protocol')!r}: use TCP, UDP or SCTP")
            continue
        ports.append(EndpointPort(str(p.get("name") or ""), port, proto))
    return tuple(ports)


def parse_endpoint_slice(
    obj: dict[str, Any], strict: bool = False
) -> tuple[EndpointSlice | None, list[Diagnostic]]:
    namespace, name, meta = _meta(obj, "EndpointSlice")
    diag = Collector("EndpointSlice", namespace, name or "<unnamed>")
    if strict:
        schema.check_fields(obj, schema.ENDPOINT_SLICE, diag)
    labels = _str_map(meta.get("labels"))
    if LABEL_HEADLESS in labels:
        return None, diag.items  # a headless Service's endpoints are for DNS, not for proxies
    service_name = labels.get(LABEL_SERVICE_NAME, "")
    if not service_name:
        diag.warning(
            "metadata.labels",
            f"no {LABEL_SERVICE_NAME} label: the slice belongs to "
            "no Service and is ignored; add the label with the Service's name",
        )
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        diag.error("addressType", f"{address_type!r}: use IPv4, IPv6 or FQDN")
    ports = _parse_endpoint_ports(obj.get("ports"), "ports", diag)
    endpoints: list[Endpoint] = []
    for i, ep in enumerate(obj.get("endpoints") or []):
        if not isinstance(ep, dict):
            diag.error(f"endpoints[{i}]", "must be a mapping with `addresses`")
            continue
        addresses = []
        for j, raw in enumerate(ep.get("addresses") or []):
            ip = _ip(raw) if address_type != "FQDN" else str(raw)
            if ip is None or (address_type in ("IPv4", "IPv6") and family_of(ip) != address_type):
                diag.warning(
                    f"endpoints[{i}].addresses[{j}]",
                    f"{raw!r} ignored: not an {address_type} address",
                )
                continue
            if strict and address_type != "FQDN" and special_address(ip):
                diag.error(f"endpoints[{i}].addresses[{j}]", f"{ip} {special_address(ip)}")
                continue
            addresses.append(ip)
        if not addresses:
            continue
        ready, serving, terminating = _conditions(ep.get("conditions"))
        zones, nodes = _hints(ep.get("hints"), f"endpoints[{i}].hints", diag)
        endpoints.append(
            Endpoint(
                addresses=tuple(addresses),
                ready=ready,
                serving=serving,
                terminating=terminating,
                node_name=str(ep.get("nodeName") or ""),
                zone=str(ep.get("zone") or ""),
                hostname=str(ep.get("hostname") or ""),
                target=_target_name(ep.get("targetRef")),
                zone_hints=zones,
                node_hints=nodes,
            )
        )
    if diag.has_errors or not service_name:
        return None, diag.items
    annotations = _str_map(meta.get("annotations"))
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=service_name,
        address_type=address_type,
        endpoints=tuple(endpoints),
        ports=ports,
        trigger_time=annotations.get("endpoints.kubernetes.io/last-change-trigger-time", ""),
    ), diag.items


def parse_endpoints(
    obj: dict[str, Any], strict: bool = False
) -> tuple[list[EndpointSlice], list[Diagnostic]]:
    """A v1 Endpoints object, mirrored into EndpointSlices as the mirroring controller does:
    one slice per subset and address family; addresses are ready, notReadyAddresses are not."""
    namespace, name, meta = _meta(obj, "Endpoints")
    diag = Collector("Endpoints", namespace, name or "<unnamed>")
    if not name:
        diag.error("metadata.name", "required: the name of the Service these endpoints serve")
        return [], diag.items
    if LABEL_HEADLESS in _str_map(meta.get("labels")):
        return [], diag.items  # a headless Service's endpoints are for DNS, not for proxies
    if strict:
        schema.check_fields(obj, schema.ENDPOINTS, diag)
    subsets = obj.get("subsets") or []
    if not isinstance(subsets, list):
        diag.error("subsets", "must be a list")
    if diag.has_errors:
        return [], diag.items
    slices: list[EndpointSlice] = []
    for s, subset in enumerate(subsets):
        if not isinstance(subset, dict):
            diag.error(f"subsets[{s}]", "must be a mapping with addresses and ports")
            continue
        ports = _parse_endpoint_ports(subset.get("ports"), f"subsets[{s}].ports", diag)
        by_family: dict[str, list[Endpoint]] = {"IPv4": [], "IPv6": []}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for i, addr in enumerate(subset.get(key) or []):
                ip = _ip(addr.get("ip")) if isinstance(addr, dict) else None
                if ip is None:
                    diag.warning(
                        f"subsets[{s}].{key}[{i}].ip",
                        f"{addr!r} ignored: needs `ip:` with an IP address",
                    )
                    continue
                if strict and special_address(ip):
                    diag.error(f"subsets[{s}].{key}[{i}].ip", f"{ip} {special_address(ip)}")
                    continue
                by_family[family_of(ip)].append(
                    Endpoint(
                        addresses=(ip,),
                        ready=ready,
                        serving=ready,
                        terminating=False,
                        node_name=str(addr.get("nodeName") or ""),
                        hostname=str(addr.get("hostname") or ""),
                        target=_target_name(addr.get("targetRef")),
                    )
                )
        if not subset.get("addresses") and not subset.get("notReadyAddresses"):
            diag.warning(
                f"subsets[{s}]", "has no addresses: list them under `addresses:` (each with `ip:`)"
            )
        for fam, eps in by_family.items():
            if eps:
                slices.append(
                    EndpointSlice(
                        namespace=namespace,
                        name=f"{name}-mirror-{s}-{fam.lower()}",
                        service_name=name,
                        address_type=fam,
                        endpoints=tuple(eps),
                        ports=ports,
                    )
                )
    return slices, diag.items


def parse_node(obj: dict[str, Any]) -> tuple[Node | None, list[Diagnostic]]:
    _, name, meta = _meta(obj, "Node")
    diag = Collector("Node", "", name or "<unnamed>")
    if not name:
        diag.error("metadata.name", "required")
        return None, diag.items
    status = obj.get("status") or {}
    order = {"InternalIP": 0, "ExternalIP": 1}
    addrs = sorted(
        (
            a
            for a in status.get("addresses") or []
            if isinstance(a, dict) and a.get("type") in order and _ip(a.get("address"))
        ),
        key=lambda a: order[a["type"]],
    )
    spec = obj.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    taints = spec.get("taints") if isinstance(spec.get("taints"), list) else []
    return Node(
        name=name,
        addresses=tuple(dict.fromkeys(_ip(a["address"]) for a in addrs)),
        labels=_str_map(meta.get("labels")),
        pod_cidrs=tuple(c for c in (_cidr(c) for c in cidrs) if c),
        network_unavailable=any(
            c.get("type") == "NetworkUnavailable" and c.get("status") == "True" for c in conditions
        ),
        to_be_deleted=bool(meta.get("deletionTimestamp"))
        or any(isinstance(t, dict) and t.get("key") == TAINT_TO_BE_DELETED for t in taints),
    ), diag.items


def parse_service_cidr(obj: dict[str, Any]) -> tuple[list[str], list[Diagnostic]]:
    """The ranges of a ServiceCIDR (networking.k8s.io/v1): spec.cidrs, at most one of each
    family. A malformed entry gets one diagnostic; the object's other entries still count."""
    _, name, _ = _meta(obj, "ServiceCIDR")
    diag = Collector("ServiceCIDR", "", name or "<unnamed>")
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    raw = spec.get("cidrs")
    if not isinstance(raw, list):
        diag.error("spec.cidrs", "must be a list of CIDRs (e.g. 10.96.0.0/16, fd00:10:96::/112)")
        return [], diag.items
    out: list[str] = []
    for i, value in enumerate(raw):
        cidr = _cidr(value)
        if cidr is None or "/" not in str(value):
            diag.error(f"spec.cidrs[{i}]", f"{value!r} is not a CIDR; this entry is ignored")
        elif any((":" in c) == (":" in cidr) for c in out):
            diag.error(f"spec.cidrs[{i}]", "a second range of one family; this entry is ignored")
        else:
            out.append(cidr)
    return out, diag.items
