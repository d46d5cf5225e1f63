"""Frontends have owners: a table of hostile Services (each a tenant's attempt on another's
traffic) against a victim. The victim keeps its frontend and its backends, the attempt gets an
error naming the winner (the agent posts it as a Warning Event), whatever the names' order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from controlplane.model import Level, TranslateConfig, translate
from controlplane.model.parse import parse_service, special_address
from tests.helpers import NODE1, NODE2, ep, slice_

NODE_ADDRESSES = frozenset(NODE1.addresses + NODE2.addresses)
OLD, NEW = "2024-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


def obj(namespace: str, name: str, created: str, uid: str = "", **spec) -> dict:
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    status = spec.pop("status", None)
    meta = {"name": name, "namespace": namespace, "creationTimestamp": created, "uid": uid}
    out = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if status:
        out["status"] = status
    return out


@dataclass(frozen=True)
class Case:
    description: str
    victim: dict
    attempt: dict
    frontend: tuple[str, int]  # the contested address and port
    victim_keeps: bool = True
    error: str = "is already served by Service"
    cfg: TranslateConfig = field(default_factory=TranslateConfig)


DNS = obj(
    "kube-system", "kube-dns", OLD, clusterIP="10.96.0.10",
    ports=[{"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}],
)  # fmt: skip
LB = obj(
    "shop", "front", OLD, clusterIP="10.96.1.1", type="LoadBalancer",
    status={"loadBalancer": {"ingress": [{"ip": "192.168.198.240"}]}},
)  # fmt: skip

CASES = [
    Case(
        "an externalIP on the DNS's ClusterIP (CVE-2020-8554), from a name that sorts first",
        DNS,
        obj(
            "aaa",
            "evil",
            OLD,
            clusterIP="10.96.5.5",
            externalIPs=["10.96.0.10"],
            ports=[{"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}],
        ),  # fmt: skip
        ("10.96.0.10", 53),
    ),
    Case(
        "an externalIP on the cluster DNS's ClusterIP, from an older Service: a ClusterIP wins",
        obj(
            "kube-system",
            "kube-dns",
            NEW,
            clusterIP="10.96.0.10",
            ports=[{"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}],
        ),  # fmt: skip
        obj(
            "aaa",
            "evil",
            OLD,
            clusterIP="10.96.5.5",
            externalIPs=["10.96.0.10"],
            ports=[{"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}],
        ),  # fmt: skip
        ("10.96.0.10", 53),
    ),
    Case(
        "an externalIP on a node's address (its SSH, its kubelet)",
        obj(
            "default",
            "nodeport",
            OLD,
            clusterIP="10.96.2.2",
            type="NodePort",
            ports=[{"name": "http", "port": 22, "targetPort": 8080, "nodePort": 30022}],
        ),  # fmt: skip
        obj(
            "aaa",
            "evil",
            NEW,
            clusterIP="10.96.5.5",
            externalIPs=["192.168.198.201"],
            ports=[{"name": "http", "port": 22, "targetPort": 8080}],
        ),  # fmt: skip
        ("192.168.198.201", 22),
        victim_keeps=False,  # nobody may have it: the node's own port 22 stays the node's
        error="is a Node's address; an externalIP may not take it",
        cfg=TranslateConfig(node_addresses=NODE_ADDRESSES),
    ),
    Case(
        "an externalIP on another Service's LoadBalancer IP, from a newer Service",
        LB,
        obj("aaa", "evil", NEW, clusterIP="10.96.5.5", externalIPs=["192.168.198.240"]),
        ("192.168.198.240", 80),
    ),
    Case(
        "a LoadBalancer ingress written onto a node's address",
        obj(
            "default",
            "nodeport",
            OLD,
            clusterIP="10.96.2.2",
            type="NodePort",
            ports=[{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        ),  # fmt: skip
        obj(
            "aaa",
            "evil",
            NEW,
            clusterIP="10.96.5.5",
            type="LoadBalancer",
            status={"loadBalancer": {"ingress": [{"ip": "192.168.198.202"}]}},
        ),  # fmt: skip
        ("192.168.198.202", 80),
        victim_keeps=False,
        error="is a Node's address; a LoadBalancer IP may not take it",
        cfg=TranslateConfig(node_addresses=NODE_ADDRESSES),
    ),
    Case(
        "two externalIPs on one address: the older Service keeps it, ties by uid",
        obj("zzz", "first", OLD, "a-uid", clusterIP="10.96.3.3", externalIPs=["198.51.100.9"]),
        obj("aaa", "second", OLD, "b-uid", clusterIP="10.96.5.5", externalIPs=["198.51.100.9"]),
        ("198.51.100.9", 80),
    ),
    Case(
        "externalIPs denied on the cluster (--external-ips deny)",
        obj("default", "plain", OLD, clusterIP="10.96.2.2"),
        obj("aaa", "evil", NEW, clusterIP="10.96.5.5", externalIPs=["198.51.100.9"]),
        ("198.51.100.9", 80),
        victim_keeps=False,
        error="externalIPs are denied on this cluster",
        cfg=TranslateConfig(external_ips=("deny",)),
    ),
    Case(
        "an externalIP outside the allowed CIDRs",
        obj("default", "plain", OLD, clusterIP="10.96.2.2"),
        obj("aaa", "evil", NEW, clusterIP="10.96.5.5", externalIPs=["198.51.100.9"]),
        ("198.51.100.9", 80),
        victim_keeps=False,
        error="is outside the allowed externalIPs (203.0.113.0/24)",
        cfg=TranslateConfig(external_ips=("203.0.113.0/24",)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_the_victim_keeps_its_traffic(case: Case):
    victim, _ = parse_service(case.victim)
    attempt, _ = parse_service(case.attempt)
    assert victim and attempt
    slices = [
        slice_(victim.name, [ep("10.244.1.5")], namespace=victim.namespace, ports=[
            {"name": p.name, "port": 8080, "protocol": str(p.protocol)} for p in victim.ports
        ]),
        slice_(attempt.name, [ep("10.244.9.9")], namespace=attempt.namespace, ports=[
            {"name": p.name, "port": 8080, "protocol": str(p.protocol)} for p in attempt.ports
        ]),
    ]  # fmt: skip
    state = translate([attempt, victim], slices, NODE1, case.cfg)
    address, port = case.frontend
    owners = {f.service for f in state.frontends if (f.address, f.port) == (address, port)}
    if case.victim_keeps:
        assert owners == {victim.key}, owners
        backends = {
            b.address
            for f in state.frontends
            if (f.address, f.port) == (address, port)
            for b in f.backends
        }
        assert backends == {"10.244.1.5"}  # the victim's pods, not the attacker's
    else:
        assert attempt.key not in owners, owners
    errors = [d for d in state.diagnostics if d.level is Level.ERROR and d.name == attempt.name]
    assert any(case.error in d.message for d in errors), [str(d) for d in state.diagnostics]
    if case.error.startswith("is already served"):
        assert any(victim.key in d.message for d in errors)  # the winner is named
    assert not any(d.level is Level.ERROR and d.name == victim.name for d in state.diagnostics)


@pytest.mark.parametrize(
    "ip, refused",
    [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.53", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local range"),  # a cloud's metadata server
        ("fe80::1", "link-local range"),
        ("224.0.0.251", "link-local multicast"),  # mDNS
        ("ff02::fb", "link-local multicast"),
        ("ff12::1", "link-local multicast"),  # scope 2 with the transient flag: Go's rule
        ("239.1.1.1", None),
        ("192.168.1.10", None),
        ("2001:db8::1", None),
    ],
)
def test_the_api_servers_special_addresses(ip, refused):
    """ValidateNonSpecialIP's rule (kube-apiserver), which manifests get too."""
    got = special_address(ip)
    assert (got is None) if refused is None else (refused in got), got


def test_manifests_refuse_special_externalips_and_endpoints():
    svc, diags = parse_service(obj("a", "b", OLD, clusterIP="10.96.0.9", externalIPs=["127.0.0.1"]),
                               strict=True)  # fmt: skip
    assert svc is None and "loopback" in str(diags[0])
    obj_slice = {
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "b"}},
        "endpoints": [{"addresses": ["169.254.169.254"]}],
        "ports": [{"port": 80}],
    }
    from controlplane.model.parse import parse_endpoint_slice

    _, diags = parse_endpoint_slice(obj_slice, strict=True)
    assert any("link-local" in str(d) for d in diags)
    # from a real API server (validated there) nothing is second-guessed
    svc, _ = parse_service(obj("a", "b", OLD, clusterIP="10.96.0.9", externalIPs=["127.0.0.1"]))
    assert svc is not None


def test_the_incremental_translator_settles_ownership_as_the_full_one():
    """A hostile Service arriving in a later sync (the patched path) ends as translate()
    would have it: the ClusterIP's address stays its Service's in every scope."""
    from controlplane.model import Translator
    from controlplane.model.snapshot import ValueTracker

    victim, _ = parse_service(DNS)
    attempt, _ = parse_service(CASES[0].attempt)
    translator, tracker = Translator(), ValueTracker()
    translator([victim], [], NODE1, None, tracker.changes([victim], []))
    changes = tracker.changes([victim, attempt], [])
    assert changes.services == {attempt.key}  # so the translator may patch
    incremental = translator([victim, attempt], [], NODE1, None, changes)
    full = translate([victim, attempt], [], NODE1)
    assert incremental.frontends == full.frontends
    assert {f.service for f in full.frontends if f.address == "10.96.0.10"} == {victim.key}
