"""API-server validation and strict decoding: each bad field gets one precise diagnostic."""

from __future__ import annotations

import pytest

from controlplane.model import Level
from controlplane.model.parse import (
    parse_endpoint_slice,
    parse_endpoints,
    parse_node,
    parse_service,
)
from tests.helpers import svc


def errors(obj, strict=True):
    parsed, diags = parse_service(obj, strict=strict)
    return parsed, [(d.field, d.message) for d in diags if d.level is Level.ERROR]


@pytest.mark.parametrize(
    "description,spec,field,words",
    [
        ("unknown type", {"type": "Ingress"}, "spec.type", "ClusterIP, NodePort"),
        ("port out of range", {"ports": [{"port": 70000}]}, "spec.ports[0].port", "1-65535"),
        ("port not a number", {"ports": [{"port": "http"}]}, "spec.ports[0].port", "1-65535"),
        (
            "unnamed ports in a multi-port Service",
            {"ports": [{"port": 80}, {"name": "b", "port": 81}]},
            "spec.ports[0].name",
            "more than one",
        ),
        (
            "duplicate port",
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
            "spec.ports[1]",
            "duplicate TCP port 80",
        ),
        (
            "bad protocol",
            {"ports": [{"port": 80, "protocol": "ICMP"}]},
            "spec.ports[0].protocol",
            "TCP, UDP or SCTP",
        ),
        (
            "bad named targetPort",
            {"ports": [{"port": 80, "targetPort": "Not_A_Name"}]},
            "spec.ports[0].targetPort",
            "port name",
        ),
        (
            "nodePort on ClusterIP",
            {"ports": [{"port": 80, "nodePort": 30001}]},
            "spec.ports[0].nodePort",
            "NodePort or LoadBalancer",
        ),
        ("bad clusterIP", {"clusterIP": "10.96.0.300"}, "spec.clusterIPs[0]", "not a valid IP"),
        ("bad externalIP", {"externalIPs": ["nope"]}, "spec.externalIPs[0]", "not a valid IP"),
        (
            "affinity timeout too long",
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "between 1 and 86400",
        ),
        (
            "unknown affinity",
            {"sessionAffinity": "Cookie"},
            "spec.sessionAffinity",
            "None or ClientIP",
        ),
        (
            "externalTrafficPolicy on plain ClusterIP",
            {"externalTrafficPolicy": "Local"},
            "spec.externalTrafficPolicy",
            "externally-accessible",
        ),
        (
            "bad traffic policy",
            {"type": "NodePort", "externalTrafficPolicy": "Nearest"},
            "spec.externalTrafficPolicy",
            "Cluster or Local",
        ),
        (
            "healthCheckNodePort without Local",
            {"type": "LoadBalancer", "healthCheckNodePort": 32000},
            "spec.healthCheckNodePort",
            "externalTrafficPolicy is Local",
        ),
        (
            "SingleStack with two IPs",
            {"clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilyPolicy": "SingleStack"},
            "spec.ipFamilyPolicy",
            "one family",
        ),
        (
            "family mismatch",
            {"clusterIP": "10.96.0.10", "ipFamilies": ["IPv6"]},
            "spec.ipFamilies[0]",
            "does not match",
        ),
        (
            "bad source range",
            {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"]},
            "spec.loadBalancerSourceRanges[0]",
            "not a CIDR",
        ),
        (
            "misspelled spec field",
            {"selecter": {"app": "x"}},
            "spec.selecter",
            "did you mean 'selector'",
        ),
    ],
)
def test_invalid_service_is_rejected_with_field_and_fix(description, spec, field, words):
    parsed, errs = errors(svc(**spec))
    assert parsed is None, description
    assert any(f == field and words in m for f, m in errs), (description, errs)


def test_missing_name_and_spec():
    assert errors({"kind": "Service", "metadata": {}})[1] == [
        ("metadata.name", "required; give the Service a name")
    ]
    parsed, errs = errors({"kind": "Service", "metadata": {"name": "x"}})
    assert parsed is None and errs[0][0] == "spec"


def test_defaults_applied():
    parsed, diags = parse_service(svc(ports=[{"port": 80}]))
    assert diags == []
    (port,) = parsed.ports
    assert (port.name, port.protocol, port.target_port) == ("", "TCP", 80)
    assert parsed.namespace == "default" and parsed.ip_families == ("IPv4",)


def test_numeric_string_target_port_is_a_number():
    parsed, _ = parse_service(svc(ports=[{"port": 80, "targetPort": "8080"}]))
    assert parsed.ports[0].target_port == 8080


def test_strict_only_for_manifests():
    obj = svc(futureField=True)
    assert parse_service(obj, strict=False)[0] is not None  # a newer API server's field
    assert parse_service(obj, strict=True)[0] is None


def test_global_is_the_old_spelling_of_cluster():
    parsed, diags = parse_service(svc(type="NodePort", externalTrafficPolicy="Global"))
    assert parsed.external_traffic_policy == "Cluster" and diags == []


def test_endpoint_slice_conditions_nil_semantics():
    obj = {
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["fd00::1"]},
        ],
        "ports": [{"port": 80}],
    }
    parsed, diags = parse_endpoint_slice(obj)
    got = [(e.addresses[0], e.ready, e.serving, e.terminating) for e in parsed.endpoints]
    assert got == [
        ("10.0.0.1", True, True, False),
        ("10.0.0.2", False, True, False),
        ("10.0.0.3", False, True, True),
    ]
    assert [d.field for d in diags] == ["endpoints[3].addresses[0]"]  # wrong family, skipped


def test_endpoint_slice_without_service_label_is_ignored_with_a_warning():
    obj = {
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s"},
        "endpoints": [],
        "ports": [],
    }
    parsed, diags = parse_endpoint_slice(obj)
    assert parsed is None and "kubernetes.io/service-name" in diags[0].message


def test_endpoints_are_mirrored_per_family():
    obj = {
        "kind": "Endpoints",
        "metadata": {"name": "db"},
        "subsets": [
            {
                "addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}, {"ip": "fd00::1"}],
                "ports": [{"name": "sql", "port": 3306}],
            }
        ],
    }
    slices, diags = parse_endpoints(obj, strict=True)
    assert diags == []
    assert [(s.address_type, [e.addresses[0] for e in s.endpoints]) for s in slices] == [
        ("IPv4", ["10.0.0.1"]),
        ("IPv6", ["fd00::1"]),
    ]
    assert slices[0].endpoints[0].node_name == "n1" and slices[0].ports[0].name == "sql"


def test_node_addresses_internal_first():
    obj = {
        "kind": "Node",
        "metadata": {"name": "n1", "labels": {"a": "b"}},
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "192.168.0.5"},
            ]
        },
    }
    node, _ = parse_node(obj)
    assert node.addresses == ("192.168.0.5", "203.0.113.5")
    assert node.pod_cidrs == ("10.244.1.0/24",)


def test_endpoint_hints_for_zones_and_nodes_and_each_malformed_list_one_warning():
    def endpoint(ip: str, hints) -> dict:
        return {"addresses": [ip], "nodeName": "node-1", "hints": hints}

    obj = {
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [
            endpoint("10.0.0.1", {"forZones": [{"name": "a"}], "forNodes": [{"name": "node-1"}]}),
            endpoint("10.0.0.2", "zone-a"),
            endpoint("10.0.0.3", {"forNodes": "node-1", "forZones": [{"name": "a"}]}),
            endpoint("10.0.0.4", {"forNodes": [{"name": "node-1"}, {"nom": "node-2"}]}),
            endpoint("10.0.0.5", {"forZones": [{"name": 7}]}),
        ],
        "ports": [{"port": 80}],
    }
    parsed, diags = parse_endpoint_slice(obj)
    got = [(e.addresses[0], e.zone_hints, e.node_hints) for e in parsed.endpoints]
    assert got == [  # every endpoint kept; a malformed list is no hints of that kind
        ("10.0.0.1", ("a",), ("node-1",)),
        ("10.0.0.2", (), ()),
        ("10.0.0.3", ("a",), ()),
        ("10.0.0.4", (), ()),
        ("10.0.0.5", (), ()),
    ]
    assert [(d.level, d.field) for d in diags] == [
        (Level.WARNING, "endpoints[1].hints"),
        (Level.WARNING, "endpoints[2].hints.forNodes"),
        (Level.WARNING, "endpoints[3].hints.forNodes[1]"),
        (Level.WARNING, "endpoints[4].hints.forZones[0]"),
    ]


@pytest.mark.parametrize("value", ["PreferClose", "PreferSameZone", "PreferSameNode"])
def test_traffic_distribution_values_of_1_35(value):
    parsed, diags = parse_service(svc(trafficDistribution=value))
    assert parsed.traffic_distribution == value and diags == []


def test_an_unsupported_traffic_distribution_is_one_warning_and_spread_cluster_wide():
    parsed, diags = parse_service(svc(trafficDistribution="PreferSameRack"))
    assert parsed is not None and parsed.traffic_distribution == ""
    (d,) = diags
    assert d.level is Level.WARNING and d.field == "spec.trafficDistribution"
    assert "PreferSameRack" in d.message and "PreferSameNode" in d.message


@pytest.mark.parametrize(
    "cidrs,kept,fields",
    [
        (["10.96.0.0/16", "fd00:10:96::/112"], ["10.96.0.0/16", "fd00:10:96::/112"], []),
        (["10.96.0.0/16", "bogus"], ["10.96.0.0/16"], ["spec.cidrs[1]"]),
        (["10.96.0.1"], [], ["spec.cidrs[0]"]),  # an address is no range
        (["10.96.0.0/16", "10.97.0.0/16"], ["10.96.0.0/16"], ["spec.cidrs[1]"]),
        ([7, "fd00::/64"], ["fd00::/64"], ["spec.cidrs[0]"]),
        ("10.96.0.0/16", [], ["spec.cidrs"]),  # not a list
    ],
)
def test_service_cidr_entries_are_kept_or_get_one_diagnostic_each(cidrs, kept, fields):
    from controlplane.model.parse import parse_service_cidr

    obj = {"kind": "ServiceCIDR", "metadata": {"name": "extra"}, "spec": {"cidrs": cidrs}}
    got, diags = parse_service_cidr(obj)
    assert got == kept
    assert [d.field for d in diags] == fields
    assert all(d.kind == "ServiceCIDR" and d.name == "extra" for d in diags)


def test_the_address_space_holds_every_clusterip_and_canonical_ranges():
    from controlplane.model import Service
    from controlplane.model.state import DesiredState
    from controlplane.model.translate import with_address_space

    services = [
        Service("default", "a", cluster_ips=("10.96.0.10", "fd00:10:96::a")),
        Service("default", "b", cluster_ips=("10.96.0.11",)),
        Service("default", "headless", headless=True),
        # another proxy's: kube-proxy never watches it, so its address is no ClusterIP here
        Service(
            "default",
            "theirs",
            cluster_ips=("10.96.0.12",),
            labels={"service.kubernetes.io/service-proxy-name": "other"},
        ),
    ]
    state = with_address_space(
        DesiredState(), services, ["10.96.0.0/16", "FD00:10:96::0/112", "10.97.0.5/32", "x"]
    )
    assert state.cluster_ips == {"10.96.0.10", "fd00:10:96::a", "10.96.0.11"}
    assert state.service_cidrs == ("10.96.0.0/16", "fd00:10:96::/112", "10.97.0.5")


def test_the_address_space_is_walked_again_only_when_the_changes_name_a_service():
    import dataclasses

    from controlplane.model import Service
    from controlplane.model.snapshot import Changes, ValueTracker
    from controlplane.model.state import DesiredState
    from controlplane.model.translate import AddressSpace

    services = [Service("default", f"s{i}", cluster_ips=(f"10.96.0.{i}",)) for i in range(3)]
    space, tracker = AddressSpace(), ValueTracker()
    first = space(DesiredState(), services, ["10.96.0.0/16"], None, tracker.changes(services, []))
    assert first.cluster_ips == {"10.96.0.0", "10.96.0.1", "10.96.0.2"}
    same = tracker.changes(list(services), [])
    again = space(DesiredState(), list(services), ["10.96.0.0/16", "10.97.0.0/16"], None, same)
    assert again.cluster_ips is first.cluster_ips  # nothing changed: not walked again
    assert again.service_cidrs == ("10.96.0.0/16", "10.97.0.0/16")  # ranges always fresh
    moved = [*services[:2], dataclasses.replace(services[2], cluster_ips=("10.96.1.1",))]
    want = {"10.96.0.0", "10.96.0.1", "10.96.1.1"}
    assert space(DesiredState(), moved, [], None, tracker.changes(moved, [])).cluster_ips == want
    # a snapshot skipped: walked, though these changes name nothing
    tracker.changes(services, [])
    skipped = tracker.changes(services, [])
    assert skipped.services == frozenset()
    assert space(DesiredState(), services, [], None, skipped).cluster_ips == first.cluster_ips
    # no changes known: walked
    assert space(DesiredState(), moved, [], None, Changes()).cluster_ips == want
