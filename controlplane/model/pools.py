"""LoadBalancer IP allocation from address pools: pure, deterministic, stable.

Pools come from xlb's config or, for users coming from MetalLB, its `IPAddressPool` objects
(metallb.io/v1beta1) read as they are. A Service keeps what it has while that stays valid; a
requested address (`metallb.io/loadBalancerIPs`, or `spec.loadBalancerIP`) must lie in a pool
and be free; otherwise each wanted family gets the lowest free address of the first pool (by
name) that may hand it out (`autoAssign`, or named by `metallb.io/address-pool`). Every agent
computing this from the same objects gets the same answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..model.diagnostics import Collector, Diagnostic
from ..model.objects import Family, Service, ServiceType

ANNOTATION_IPS = "metallb.io/loadBalancerIPs"
ANNOTATION_POOL = "metallb.io/address-pool"
ANNOTATION_PLACEMENT = "xlb.io/l2-placement"  # on an IPAddressPool: ordered | balanced
PLACEMENTS = ("ordered", "balanced")

Range = tuple[int, int, int]  # (IP version, first, last) as integers


@dataclass(frozen=True)
class Pool:
    name: str
    ranges: tuple[Range, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False  # IPv4 addresses ending in .0 or .255 are never handed out
    labels: tuple[tuple[str, str], ...] = ()  # for L2Advertisement ipAddressPoolSelectors
    balanced: bool = False  # annotated xlb.io/l2-placement: balanced (see placement)

    def contains(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return any(v == a.version and lo <= int(a) <= hi for v, lo, hi in self.ranges)

    def usable(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        if self.avoid_buggy_ips and a.version == 4 and int(a) & 0xFF in (0, 255):
            return False
        return self.contains(ip)

    def addresses(self, family: Family) -> Iterable[str]:
        version = 6 if family is Family.IPv6 else 4
        for v, lo, hi in self.ranges:
            if v != version:
                continue
            for n in range(lo, hi + 1):
                ip = str(ipaddress.ip_address(n))
                if self.usable(ip):
                    yield ip


def parse_range(text: str) -> Range:
    """A CIDR (`192.168.1.240/28`) or an inclusive range (`192.168.1.240-192.168.1.250`)."""
    if "-" in text:
        first, last = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
        if first.version != last.version or int(first) > int(last):
            raise ValueError(f"{text!r}: the range must go up, within one family")
        return first.version, int(first), int(last)
    net = ipaddress.ip_network(text.strip(), strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def parse_pool(obj: dict[str, Any]) -> tuple[Pool | None, list[Diagnostic]]:
    """A MetalLB IPAddressPool (metallb.io/v1beta1), as MetalLB reads it."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    diag = Collector("IPAddressPool", str(meta.get("namespace") or ""), name or "<unnamed>")
    spec = obj.get("spec") or {}
    ranges = []
    for i, text in enumerate(spec.get("addresses") or []):
        try:
            ranges.append(parse_range(str(text)))
        except ValueError as exc:
            diag.error(
                f"spec.addresses[{i}]",
                f"{exc}; write a CIDR (192.168.1.240/28) or a range (192.168.1.240-192.168.1.250)",
            )
    if not ranges and not diag.has_errors:
        diag.error("spec.addresses", "required: list at least one CIDR or range")
    if not name:
        diag.error("metadata.name", "required")
    if diag.has_errors:
        return None, diag.items
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    placement = str(annotations.get(ANNOTATION_PLACEMENT, "ordered"))
    if placement not in PLACEMENTS:
        diag.warning(
            f"metadata.annotations[{ANNOTATION_PLACEMENT}]",
            f"{placement!r} is not one of {', '.join(PLACEMENTS)}; the pool keeps MetalLB's "
            "order (ordered)",
        )
        placement = "ordered"
    return Pool(
        name,
        tuple(ranges),
        spec.get("autoAssign", True) is not False,
        spec.get("avoidBuggyIPs") is True,
        tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        placement == "balanced",
    ), diag.items


def config_pool(text: str) -> Pool:
    """A pool from xlb's own config: `NAME=RANGE[,RANGE...]`, each a CIDR or first-last;
    raises ValueError saying what is wrong."""
    name, sep, ranges = text.partition("=")
    if not sep or not name.strip() or not ranges.strip():
        raise ValueError(
            f"{text!r}: write NAME=RANGE[,RANGE...], e.g. lan=192.168.1.240/28,fd00::240/124"
        )
    return Pool(name.strip(), tuple(parse_range(r) for r in ranges.split(",") if r.strip()))


@dataclass(frozen=True)
class Advertisement:
    """A MetalLB L2Advertisement: which pools' addresses are announced, from which nodes and
    on which interfaces. No pools and no pool selectors: every pool."""

    name: str
    pools: tuple[str, ...] = ()
    pool_selectors: tuple[tuple[tuple[str, str], ...], ...] = ()  # matchLabels, any of them
    node_selectors: tuple[tuple[tuple[str, str], ...], ...] = ()
    interfaces: tuple[str, ...] = ()

    def covers(self, pool: Pool | None) -> bool:
        if not self.pools and not self.pool_selectors:
            return True
        if pool is None:
            return False
        labels = dict(pool.labels)
        return pool.name in self.pools or any(
            all(labels.get(k) == v for k, v in sel) for sel in self.pool_selectors
        )

    def admits(self, node_labels: dict[str, str]) -> bool:
        return not self.node_selectors or any(
            all(node_labels.get(k) == v for k, v in sel) for sel in self.node_selectors
        )


def _selectors(raw: Any, field: str, diag: Collector) -> tuple:
    out = []
    for i, sel in enumerate(raw or []):
        if not isinstance(sel, dict):
            diag.error(f"{field}[{i}]", "must be a label selector (matchLabels)")
            continue
        if sel.get("matchExpressions"):
            diag.error(
                f"{field}[{i}].matchExpressions",
                "not supported by xlb yet; write the selector with matchLabels",
            )
            continue
        labels = sel.get("matchLabels") or {}
        out.append(tuple(sorted((str(k), str(v)) for k, v in labels.items())))
    return tuple(out)


def parse_advertisement(obj: dict[str, Any]) -> tuple[Advertisement | None, list[Diagnostic]]:
    """A MetalLB L2Advertisement (metallb.io/v1beta1), as MetalLB reads it."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    diag = Collector("L2Advertisement", str(meta.get("namespace") or ""), name or "<unnamed>")
    spec = obj.get("spec") or {}
    if not name:
        diag.error("metadata.name", "required")
    ad = Advertisement(
        name,
        tuple(str(p) for p in spec.get("ipAddressPools") or []),
        _selectors(spec.get("ipAddressPoolSelectors"), "spec.ipAddressPoolSelectors", diag),
        _selectors(spec.get("nodeSelectors"), "spec.nodeSelectors", diag),
        tuple(str(i) for i in spec.get("interfaces") or []),
    )
    return (None if diag.has_errors else ad), diag.items


def pool_of(ip: str, pools: Iterable[Pool]) -> Pool | None:
    """The pool an address belongs to (the first by name)."""
    return next((p for p in sorted(pools, key=lambda p: p.name) if p.contains(ip)), None)


def ours(svc: Service, lb_class: str = "") -> bool:
    """Whether this allocator serves the Service: no spec.loadBalancerClass (the cluster's
    default controller), or the class xlb was configured with; another class is another
    controller's to serve, as MetalLB does."""
    return svc.load_balancer_class in ("", lb_class) if lb_class else not svc.load_balancer_class


def _requested(svc: Service) -> list[str]:
    raw = svc.annotations.get(ANNOTATION_IPS, "")
    ips = [x.strip() for x in raw.split(",") if x.strip()] if raw else []
    return ips or ([svc.load_balancer_ip] if svc.load_balancer_ip else [])


def allocate(
    services: Iterable[Service],
    pools: list[Pool],
    current: dict[str, tuple[str, ...]] | None = None,
    lb_class: str = "",
) -> tuple[dict[str, tuple[str, ...]], list[Diagnostic]]:
    """The LoadBalancer IPs of every LoadBalancer Service this allocator serves
    (namespace/name -> addresses)."""
    current = current or {}
    pools = sorted(pools, key=lambda p: p.name)
    owner: dict[str, str] = {}
    result: dict[str, tuple[str, ...]] = {}
    diags: list[Diagnostic] = []
    lbs = sorted(
        (s for s in services if s.type is ServiceType.LOAD_BALANCER and ours(s, lb_class)),
        key=lambda s: (s.key not in current, not _requested(s), s.key),
    )

    def pool_of(ip: str) -> Pool | None:
        return next((p for p in pools if p.usable(ip)), None)

    for svc in lbs:
        diag = Collector("Service", svc.namespace, svc.name)
        families = list(svc.ip_families) or [Family.IPv4]
        named = svc.annotations.get(ANNOTATION_POOL)
        candidates = [p for p in pools if (p.name == named if named else p.auto_assign)]
        if named and not candidates:
            diag.error(
                f"metadata.annotations[{ANNOTATION_POOL}]",
                f"no address pool named {named!r}; pools: "
                f"{', '.join(p.name for p in pools) or 'none'}",
            )
        got: list[str] = []
        requested = _requested(svc)
        if requested:
            for ip in requested:
                try:
                    ip = str(ipaddress.ip_address(ip))
                except ValueError:
                    diag.error("spec.loadBalancerIP", f"{ip!r} is not an IP address")
                    continue
                if pools and pool_of(ip) is None:
                    diag.error(
                        "spec.loadBalancerIP",
                        f"{ip} is in no address pool; add a pool "
                        "that contains it, or drop the request to get one assigned",
                    )
                elif ip in owner:
                    diag.error(
                        "spec.loadBalancerIP", f"{ip} is already assigned to Service {owner[ip]}"
                    )
                else:
                    got.append(ip)
        else:
            kept = [
                ip
                for ip in current.get(svc.key, ())
                if ip not in owner and any(p.usable(ip) for p in candidates)
            ]
            for family in families:
                same = [ip for ip in kept if (":" in ip) == (family is Family.IPv6)]
                if same:
                    got.append(same[0])
                    continue
                free = next(
                    (ip for p in candidates for ip in p.addresses(family) if ip not in owner), None
                )
                if free is None:
                    if pools and not diag.has_errors:
                        diag.warning(
                            "status.loadBalancer.ingress",
                            f"no free {family} address in "
                            f"{', '.join(p.name for p in candidates) or 'any pool'}; "
                            "add addresses to a pool",
                        )
                    elif not pools:
                        diag.info(
                            "status.loadBalancer.ingress",
                            "pending: no address pool is configured; add an "
                            "IPAddressPool, or set spec.loadBalancerIP",
                        )
                    continue
                got.append(free)
        for ip in got:
            owner[ip] = svc.key
        if got:
            result[svc.key] = tuple(got)
        diags += diag.items
    return result, diags


def status_changes(
    services: Iterable[Service],
    assigned: dict[str, tuple[str, ...]],
    pools: list[Pool],
    lb_class: str = "",
) -> dict[str, tuple[str, ...]]:
    """The status.loadBalancer.ingress writes that make the API match an allocation:
    namespace/name -> addresses (empty: clear). A Service that is no longer a LoadBalancer
    loses the addresses it holds from our pools (released); addresses this allocator did not
    give (another controller's, another class) are never touched."""
    out: dict[str, tuple[str, ...]] = {}
    for svc in services:
        if not ours(svc, lb_class):
            continue
        if svc.type is ServiceType.LOAD_BALANCER:
            want = assigned.get(svc.key, ())
            if sorted(svc.ingress_ips) != sorted(want):
                out[svc.key] = want
        elif svc.ingress_ips and any(pool_of(ip, pools) for ip in svc.ingress_ips):
            out[svc.key] = ()
    return out
