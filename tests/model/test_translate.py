"""Every rule of DESIGN.md §3, one test (or table) each, on Kubernetes-shaped input."""

from __future__ import annotations

import pytest

from controlplane.model import (
    Algorithm,
    FrontendKind,
    Level,
    NoBackend,
    Protocol,
    Scope,
    TranslateConfig,
    translate,
)
from controlplane.model.objects import Node
from controlplane.model.parse import parse_endpoints
from tests.helpers import EXAMPLES, NODE1, NODE2, addrs, ep, service, slice_


def frontends(state, kind=None, scope=None):
    return [
        f
        for f in state.frontends
        if (kind is None or f.kind == kind) and (scope is None or f.scope == scope)
    ]


def only(state, kind=FrontendKind.CLUSTER_IP, scope=Scope.INTERNAL):
    found = frontends(state, kind, scope)
    assert len(found) == 1, found
    return found[0]


# -- ClusterIP ----------------------------------------------------------------------------------


def test_cluster_ip_frontend_targets_endpoint_port():
    state = translate(
        [service()], [slice_("web", [ep("10.244.1.5"), ep("10.244.2.5", "node-2")])], NODE1
    )
    fe = only(state)
    assert (fe.address, fe.port, fe.protocol) == ("10.96.0.10", 80, Protocol.TCP)
    assert [(b.address, b.port, b.local) for b in fe.backends] == [
        ("10.244.1.5", 8080, True),
        ("10.244.2.5", 8080, False),
    ]
    assert fe.algorithm is Algorithm.RANDOM and fe.affinity_timeout == 0


@pytest.mark.parametrize(
    "spec,reason",
    [
        ({"clusterIP": "None"}, "headless"),
        (
            {"type": "ExternalName", "externalName": "db.example.com", "clusterIP": ""},
            "ExternalName",
        ),
    ],
)
def test_headless_and_external_name_are_not_proxied(spec, reason):
    state = translate([service(**spec)], [slice_("web", [ep("10.244.1.5")])], NODE1)
    assert state.frontends == ()
    assert any(d.level is Level.INFO and reason in d.message for d in state.diagnostics)


def test_a_service_labelled_headless_is_not_proxied_though_it_has_a_cluster_ip():
    """kube-proxy's informers select `!service.kubernetes.io/headless` for Services too."""
    labelled = service(labels={"service.kubernetes.io/headless": ""})
    assert labelled.cluster_ips
    state = translate([labelled], [slice_("web", [ep("10.244.1.5")])], NODE1)
    assert state.frontends == ()
    (d,) = state.diagnostics
    assert d.level is Level.INFO and "service.kubernetes.io/headless" in d.message


# -- which endpoints are eligible ---------------------------------------------------------------


@pytest.mark.parametrize(
    "description,endpoints,backends,draining",
    [
        ("ready nil counts as ready", [ep("10.0.0.1", ready=None)], ["10.0.0.1"], []),
        (
            "not ready takes no new flows but keeps its own (kube-proxy keeps established ones)",
            [ep("10.0.0.1"), ep("10.0.0.2", ready=False)],
            ["10.0.0.1"],
            ["10.0.0.2"],
        ),
        (
            "terminating is drained while a ready one exists",
            [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True, terminating=True)],
            ["10.0.0.1"],
            ["10.0.0.2"],
        ),
        (
            "no ready anywhere: serving+terminating take new flows",
            [
                ep("10.0.0.1", ready=False, serving=True, terminating=True),
                ep("10.0.0.2", ready=False, serving=False, terminating=True),
            ],
            ["10.0.0.1"],
            ["10.0.0.2"],
        ),
        (
            "terminating but not serving never takes new flows",
            [ep("10.0.0.2", ready=False, serving=False, terminating=True)],
            [],
            ["10.0.0.2"],
        ),
    ],
)
def test_eligible_endpoints(description, endpoints, backends, draining):
    fe = only(translate([service()], [slice_("web", endpoints)], NODE1))
    assert addrs(fe.backends) == backends, description
    assert addrs(fe.draining) == draining, description
    assert all(b.terminating or not b.ready for b in fe.draining)


def test_fallback_backends_are_marked_terminating():
    fe = only(
        translate(
            [service()],
            [slice_("web", [ep("10.0.0.1", ready=False, serving=True, terminating=True)])],
            NODE1,
        )
    )
    assert fe.backends[0].terminating


def test_endpoints_duplicated_across_slices_count_once():
    a = slice_("web", [ep("10.0.0.1")], name="web-a")
    b = slice_("web", [ep("10.0.0.1"), ep("10.0.0.2")], name="web-b")
    assert addrs(only(translate([service()], [a, b], NODE1)).backends) == ["10.0.0.1", "10.0.0.2"]


def test_no_endpoints_rejects():
    fe = only(translate([service()], [], NODE1))
    assert fe.backends == () and fe.no_backend is NoBackend.REJECT


# -- traffic policies ---------------------------------------------------------------------------

MIXED = [ep("10.244.1.5", "node-1"), ep("10.244.2.5", "node-2")]


def test_internal_traffic_policy_local_uses_only_local_endpoints():
    state = translate([service(internalTrafficPolicy="Local")], [slice_("web", MIXED)], NODE1)
    assert addrs(only(state).backends) == ["10.244.1.5"]


def test_internal_traffic_policy_local_without_local_endpoint_drops_not_rejects():
    fe = only(
        translate([service(internalTrafficPolicy="Local")], [slice_("web", MIXED)], Node("node-3"))
    )
    assert fe.backends == () and fe.no_backend is NoBackend.DROP


def test_local_policy_falls_back_to_local_terminating():
    eps = [
        ep("10.244.1.5", "node-1", ready=False, serving=True, terminating=True),
        ep("10.244.2.5", "node-2"),
    ]
    fe = only(translate([service(internalTrafficPolicy="Local")], [slice_("web", eps)], NODE1))
    assert addrs(fe.backends) == ["10.244.1.5"]


def test_external_traffic_policy_local_applies_to_outside_traffic_only():
    spec = {
        "type": "NodePort",
        "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    }
    state = translate([service(**spec)], [slice_("web", MIXED)], NODE1)
    ext = only(state, FrontendKind.NODE_PORT, Scope.EXTERNAL)
    inside = only(state, FrontendKind.NODE_PORT, Scope.INTERNAL)
    assert (ext.address, ext.port) == ("192.168.198.201", 30080)
    assert addrs(ext.backends) == ["10.244.1.5"] and ext.preserve_client_ip
    assert addrs(inside.backends) == ["10.244.1.5", "10.244.2.5"]
    assert not inside.preserve_client_ip
    # ClusterIP follows internalTrafficPolicy (Cluster), not externalTrafficPolicy
    assert addrs(only(state).backends) == ["10.244.1.5", "10.244.2.5"]


def test_external_traffic_policy_local_on_node_without_endpoint_drops():
    spec = {
        "type": "NodePort",
        "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    }
    state = translate([service(**spec)], [slice_("web", [ep("10.244.2.5", "node-2")])], NODE1)
    ext = only(state, FrontendKind.NODE_PORT, Scope.EXTERNAL)
    assert ext.backends == () and ext.no_backend is NoBackend.DROP


def test_health_check_node_port_counts_local_ready_endpoints():
    spec = {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}
    eps = [ep("10.244.1.5"), ep("10.244.1.6", ready=False), ep("10.244.2.5", "node-2")]
    (hc,) = translate([service(**spec)], [slice_("web", eps)], NODE1).health_checks
    assert (hc.service, hc.port, hc.local_endpoints) == ("default/web", 32000, 1)
    (hc2,) = translate([service(**spec)], [slice_("web", eps)], NODE2).health_checks
    assert hc2.local_endpoints == 1
    (hc3,) = translate([service(**spec)], [], NODE1).health_checks
    assert hc3.local_endpoints == 0


def test_health_check_node_port_counts_distinct_local_endpoints_across_ports():
    """kube-proxy's LocalReadyEndpoints squashes by IP: a pod serving http and metrics is
    one endpoint, and a pod behind only one of the ports counts too."""
    spec = {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9090, "targetPort": 9090},
        ],
    }
    both = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    slices = [
        slice_("web", [ep("10.244.1.5")], ports=both, name="web-both"),
        slice_("web", [ep("10.244.1.6")], ports=[{"name": "http", "port": 8080}], name="web-a"),
        slice_("web", [ep("10.244.1.7")], ports=[{"name": "metrics", "port": 9090}], name="web-b"),
    ]
    (hc,) = translate([service(**spec)], slices, NODE1).health_checks
    assert hc.local_endpoints == 3  # not 2 (the most behind one port), nor 4 (port by port)


# -- session affinity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,timeout",
    [
        ({"sessionAffinity": "ClientIP"}, 10800),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2}},
            },
            2,
        ),
        ({"sessionAffinity": "None"}, 0),
    ],
)
def test_session_affinity_timeout(spec, timeout):
    assert only(translate([service(**spec)], [], NODE1)).affinity_timeout == timeout


# -- ports and protocols ------------------------------------------------------------------------


def test_multi_port_and_multi_protocol_on_one_port_number():
    spec = {
        "ports": [
            {"name": "dns", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "dns-udp", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]
    }
    sl = slice_(
        "web",
        [ep("10.0.0.1")],
        ports=[
            {"name": "dns", "port": 5353, "protocol": "TCP"},
            {"name": "dns-udp", "port": 5353, "protocol": "UDP"},
        ],
    )
    state = translate([service(**spec)], [sl], NODE1)
    got = sorted((f.protocol, f.port, f.port_name, f.backends[0].port) for f in state.frontends)
    assert got == [(Protocol.TCP, 53, "dns", 5353), (Protocol.UDP, 53, "dns-udp", 5353)]


def test_named_target_port_resolved_per_slice():
    spec = {"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}
    a = slice_("web", [ep("10.0.0.1")], ports=[{"name": "http", "port": 8080}], name="a")
    b = slice_("web", [ep("10.0.0.2")], ports=[{"name": "http", "port": 9090}], name="b")
    fe = only(translate([service(**spec)], [a, b], NODE1))
    assert sorted((x.address, x.port) for x in fe.backends) == [
        ("10.0.0.1", 8080),
        ("10.0.0.2", 9090),
    ]


def test_slice_port_must_match_name_and_protocol():
    sl = slice_("web", [ep("10.0.0.1")], ports=[{"name": "other", "port": 8080}])
    assert only(translate([service()], [sl], NODE1)).backends == ()


def test_sctp_port_is_skipped_with_a_warning_and_tcp_kept():
    spec = {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 90, "protocol": "SCTP"}]}
    state = translate([service(**spec)], [], NODE1)
    assert [f.port for f in state.frontends] == [80]
    (d,) = [d for d in state.diagnostics if d.level is Level.WARNING]
    assert d.field == "spec.ports[1].protocol" and "SCTP" in d.message


def test_selectorless_service_with_hand_written_endpoints():
    endpoints = {
        "kind": "Endpoints",
        "metadata": {"name": "db", "namespace": "default"},
        "subsets": [
            {
                "addresses": [{"ip": "192.168.1.25"}],
                "notReadyAddresses": [{"ip": "192.168.1.26"}],
                "ports": [{"port": 3306}],
            }
        ],
    }
    slices, diags = parse_endpoints(endpoints, strict=True)
    assert diags == []
    spec = {"ports": [{"port": 3306}]}
    fe = only(translate([service("db", **spec)], slices, NODE1))
    assert [(b.address, b.port) for b in fe.backends] == [("192.168.1.25", 3306)]


# -- labels -------------------------------------------------------------------------------------


def test_service_proxy_name_label():
    labelled = service(labels={"service.kubernetes.io/service-proxy-name": "other"})
    assert translate([labelled], [], NODE1).frontends == ()
    mine = service(labels={"service.kubernetes.io/service-proxy-name": "xlb"})
    named = TranslateConfig(proxy_name="xlb")
    assert len(translate([mine], [], NODE1, named).frontends) == 1
    # an xlb with a proxy name serves only its labelled Services, not the unlabelled ones
    # (the cluster's default proxy's), and says why
    plain = service("plain")
    state = translate([plain, mine], [], NODE1, named)
    assert {f.service for f in state.frontends} == {"default/web"}
    assert any("--proxy-name" in d.message for d in state.diagnostics if d.name == "plain")


def test_headless_labelled_endpoint_slices_are_ignored():
    from controlplane.model.parse import parse_endpoint_slice

    obj = {
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": "x",
            "labels": {"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""},
        },
        "endpoints": [{"addresses": ["10.0.0.1"]}],
        "ports": [{"name": "http", "port": 1}],
    }
    assert parse_endpoint_slice(obj)[0] is None


# -- external addresses -------------------------------------------------------------------------


def test_node_port_on_every_node_address_of_the_service_family():
    spec = {
        "type": "NodePort",
        "ipFamilyPolicy": "PreferDualStack",
        "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    }
    state = translate([service(**spec)], [], NODE1)
    got = sorted(f.address for f in frontends(state, FrontendKind.NODE_PORT, Scope.EXTERNAL))
    assert got == ["192.168.198.201", "fd00:198::201"]
    cfg = TranslateConfig(nodeport_cidrs=("192.168.198.0/24",))
    got = [
        f.address
        for f in frontends(
            translate([service(**spec)], [], NODE1, cfg), FrontendKind.NODE_PORT, Scope.EXTERNAL
        )
    ]
    assert got == ["192.168.198.201"]


def test_node_port_addresses_primary_is_the_first_of_each_family():
    """kube-proxy's --nodeport-addresses=primary: the node's primary IPs, not its others."""
    node = Node("n", ("192.168.198.201", "fd00:198::201", "203.0.113.7", "fd00:9::7"))
    spec = {
        "type": "NodePort",
        "ipFamilyPolicy": "PreferDualStack",
        "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    }

    def addresses(*cidrs: str) -> list[str]:
        state = translate([service(**spec)], [], node, TranslateConfig(nodeport_cidrs=cidrs))
        return sorted(f.address for f in frontends(state, FrontendKind.NODE_PORT, Scope.EXTERNAL))

    assert addresses("primary") == ["192.168.198.201", "fd00:198::201"]
    assert addresses("primary", "203.0.113.0/24") == [
        "192.168.198.201",
        "203.0.113.7",
        "fd00:198::201",
    ]
    assert addresses() == sorted(node.addresses)


def test_load_balancer_without_node_ports():
    spec = {
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": False,
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.198.240"}]}},
    }
    state = translate([service(**spec)], [], NODE1)
    assert frontends(state, FrontendKind.NODE_PORT) == []
    assert only(state, FrontendKind.LOAD_BALANCER, Scope.EXTERNAL).address == "192.168.198.240"


def test_load_balancer_ingress_and_source_ranges():
    spec = {
        "type": "LoadBalancer",
        "loadBalancerSourceRanges": ["203.0.113.0/24"],
        "status": {
            "loadBalancer": {
                "ingress": [
                    {"ip": "192.168.198.240"},
                    {"ip": "192.168.198.241", "ipMode": "Proxy"},
                    {"hostname": "lb.example.com"},
                ]
            }
        },
    }
    state = translate([service(**spec)], [], NODE1)
    ext = only(state, FrontendKind.LOAD_BALANCER, Scope.EXTERNAL)
    assert ext.address == "192.168.198.240" and ext.source_ranges == ("203.0.113.0/24",)
    assert ext.algorithm is Algorithm.MAGLEV
    # the node's processes and pods are filtered too (kube-proxy's firewall-check runs in
    # prerouting and output alike); NodePorts never are
    assert only(state, FrontendKind.LOAD_BALANCER, Scope.INTERNAL).source_ranges == (
        "203.0.113.0/24",
    )
    assert all(f.source_ranges == () for f in frontends(state, FrontendKind.NODE_PORT))


def test_source_ranges_from_legacy_annotation():
    spec = {
        "type": "LoadBalancer",
        "annotations": {
            "service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 192.0.2.0/24"
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.198.240"}]}},
    }
    ext = only(translate([service(**spec)], [], NODE1), FrontendKind.LOAD_BALANCER, Scope.EXTERNAL)
    assert ext.source_ranges == ("10.0.0.0/8", "192.0.2.0/24")


def test_external_ips_both_scopes_and_family_mismatch_warns():
    spec = {"externalIPs": ["192.168.198.10", "fd00:198::10"]}
    state = translate([service(**spec)], [slice_("web", MIXED)], NODE1)
    assert {(f.address, f.scope) for f in frontends(state, FrontendKind.EXTERNAL_IP)} == {
        ("192.168.198.10", Scope.EXTERNAL),
        ("192.168.198.10", Scope.INTERNAL),
    }
    assert any("fd00:198::10 ignored" in d.message for d in state.diagnostics)


# -- dual-stack ---------------------------------------------------------------------------------


def test_dual_stack_frontends_take_backends_of_their_family():
    spec = {"clusterIPs": ["10.96.0.10", "fd00:10:96::10"], "ipFamilyPolicy": "RequireDualStack"}
    v4 = slice_("web", [ep("10.244.1.5")], family="IPv4")
    v6 = slice_("web", [ep("fd00:10:244:1::5")], family="IPv6")
    state = translate([service(**spec)], [v4, v6], NODE1)
    got = {f.address: addrs(f.backends) for f in state.frontends}
    assert got == {"10.96.0.10": ["10.244.1.5"], "fd00:10:96::10": ["fd00:10:244:1::5"]}


def test_ipv6_single_stack():
    spec = {"clusterIP": "fd00:10:96::10", "ipFamilies": ["IPv6"]}
    v6 = slice_("web", [ep("fd00:10:244:1::5")], family="IPv6")
    fe = only(translate([service(**spec)], [v6], NODE1))
    assert fe.endpoint == "[fd00:10:96::10]:80" and fe.backends[0].name == "[fd00:10:244:1::5]:8080"


# -- topology, algorithm, conflicts -------------------------------------------------------------


def test_topology_hints_narrow_cluster_endpoints_to_the_zone():
    eps = [ep("10.0.0.1", "node-1", zones=["a"]), ep("10.0.0.2", "node-2", zones=["b"])]
    for spec in ({"trafficDistribution": "PreferClose"}, {}):
        # the hints are followed whatever the Service says (kube-proxy 1.33+): the
        # EndpointSlice controller read the Service when it wrote them
        got = only(translate([service(**spec)], [slice_("web", eps)], NODE1)).backends
        assert addrs(got) == ["10.0.0.1"]
    # one endpoint without hints disables them for everyone
    eps[1] = ep("10.0.0.2", "node-2")
    spec = {"trafficDistribution": "PreferClose"}
    assert len(only(translate([service(**spec)], [slice_("web", eps)], NODE1)).backends) == 2


def test_algorithm_annotation_and_bad_value():
    good = service(annotations={"xlb.io/lb-algorithm": "source-hash"})
    assert only(translate([good], [], NODE1)).algorithm is Algorithm.SOURCE_HASH
    bad = service(annotations={"xlb.io/lb-algorithm": "round-robin"})
    state = translate([bad], [], NODE1)
    assert only(state).algorithm is Algorithm.RANDOM
    assert any("round-robin" in d.message and d.level is Level.WARNING for d in state.diagnostics)


def test_conflicting_frontends_keep_the_first_service_and_report_the_second():
    a = service("a", externalIPs=["192.168.198.10"])
    b = service("b", clusterIP="10.96.0.11", externalIPs=["192.168.198.10"])
    state = translate([b, a], [], NODE1)
    owners = {f.service for f in frontends(state, FrontendKind.EXTERNAL_IP)}
    assert owners == {"default/a"}
    assert len(frontends(state, FrontendKind.CLUSTER_IP)) == 2
    (err,) = [d for d in state.diagnostics if d.level is Level.ERROR]
    assert err.name == "b" and "already served by Service default/a" in err.message


def test_translate_without_a_node_has_no_node_ports_or_locals():
    spec = {
        "type": "NodePort",
        "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    }
    state = translate([service(**spec)], [slice_("web", MIXED)], None)
    assert frontends(state, FrontendKind.NODE_PORT) == []
    assert not any(b.local for f in state.frontends for b in f.backends)


def test_the_translator_redoes_exactly_the_services_the_changes_name(monkeypatch):
    """The contract (Translator's docstring): snapshots of one source, in order, each with its
    Changes, give translate()'s result, and only the Services named are translated again;
    anything else (no Changes, a skipped snapshot, another node) translates everything."""
    import dataclasses
    import sys

    from controlplane.model import Translator
    from controlplane.model.snapshot import Changes, ValueTracker
    from controlplane.sources.manifests import load_cluster

    module = sys.modules["controlplane.model.translate"]
    c = load_cluster([EXAMPLES / "services"])
    node = c.nodes[0]
    calls = []
    real = module._translate_service

    def counting(service, *args):
        calls.append(service.key)
        return real(service, *args)

    monkeypatch.setattr(module, "_translate_service", counting)
    translator, tracker = Translator(), ValueTracker()

    def both(services, slices, at=node, changes=None):
        """translator's result (checked against translate()) and the Services it translated."""
        changes = changes or tracker.changes(services, slices)
        calls.clear()
        got = translator(services, slices, at, None, changes)
        mine = list(calls)
        assert got == translate(services, slices, at)
        return got, mine

    _, first = both(c.services, c.slices)
    n = len(first)  # the Services translated at all (not headless, not ExternalName...)
    assert n > 10
    _, again = both(c.services, c.slices)
    assert again == []  # nothing changed: nothing translated
    # one slice changes (a new object with another readiness): that Service alone
    at = next(i for i, sl in enumerate(c.slices) if sl.endpoints)
    sl = c.slices[at]
    ep = dataclasses.replace(sl.endpoints[0], ready=not sl.endpoints[0].ready)
    slices = [
        *c.slices[:at],
        dataclasses.replace(sl, endpoints=(ep, *sl.endpoints[1:])),
        *c.slices[at + 1 :],
    ]
    got, mine = both(c.services, slices)
    assert mine == [sl.service_key] and got.changed == {sl.service_key}
    # the same objects, yet the changes name a Service: it is translated again (the source's
    # word counts, not the objects' identity, which the manifest source never keeps)
    changes = tracker.changes(c.services, slices)
    other = next(k for k in first if k != sl.service_key)
    named = dataclasses.replace(changes, services=frozenset({other}))
    _, mine = both(c.services, slices, changes=named)
    assert mine == [other]
    # a snapshot skipped: everything again
    tracker.changes(c.services, slices)
    _, mine = both(c.services, slices)
    assert len(mine) == n
    # no changes known: everything again
    _, mine = both(c.services, slices, changes=Changes())
    assert len(mine) == n
    # another node: everything again; a deleted Service is forgotten
    _, mine = both(c.services[1:], slices, at=c.nodes[1])
    assert sorted(mine) == sorted(k for k in first if k != c.services[0].key)
    assert c.services[0].key not in translator.cache
