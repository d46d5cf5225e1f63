"""The manifest source on the shipped examples, the quirks, and the control-plane duties it
takes on (allocation, endpoints from selectors)."""

from __future__ import annotations

import filecmp
import textwrap

import pytest

from controlplane.model import FrontendKind, Level, Scope, translate
from controlplane.sources.manifests import load_cluster
from controlplane.sources.simulated import ClusterConfig
from tests.helpers import EXAMPLES, SHARED_EXAMPLES


def write(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(cluster):
    return [d for d in cluster.diagnostics if d.level is Level.ERROR]


@pytest.mark.skipif(not SHARED_EXAMPLES.exists(), reason="no ../shared beside this clone")
def test_shipped_examples_are_the_shared_ones():
    for sub in ("services", "quirks"):
        cmp = filecmp.dircmp(SHARED_EXAMPLES / sub, EXAMPLES / sub)
        assert not (cmp.left_only or cmp.diff_files), (sub, cmp.left_only, cmp.diff_files)


def test_every_example_service_loads_without_errors():
    cluster = load_cluster([EXAMPLES / "services"])
    assert errors_of(cluster) == []
    assert len({s.name for s in cluster.services}) == 23
    state = translate(cluster.services, cluster.slices, cluster.nodes[0])
    assert len({f.service for f in state.frontends}) == 20  # all but headless and ExternalName


def test_example_services_are_served_as_kubernetes_specifies():
    cluster = load_cluster([EXAMPLES / "services"])
    node = cluster.nodes[0]
    state = translate(cluster.services, cluster.slices, node)
    by_service = {}
    for fe in state.frontends:
        by_service.setdefault(fe.service.split("/")[1], []).append(fe)
    # not proxied: headless and ExternalName
    for name in (
        "nginx-clusterip-svc-headless",
        "nginx-externalname-svc",
        "nginx-externalname-svc-with-externalips",
    ):
        assert name not in by_service
    # fixed ClusterIPs from both a kubeadm and a kubeasz service CIDR
    assert by_service["nginx-clusterip-svc-with-ip"][0].address == "10.68.100.100"
    assert by_service["redis-svc"][0].address == "10.97.97.97"
    assert by_service["redis-svc"][0].backends[0].port == 6379
    # the nginx Deployment's three replicas back every nginx Service
    assert len(by_service["nginx-clusterip-svc"][0].backends) == 3
    # the fixed NodePort
    nodeports = [
        f for f in by_service["nginx-nodeport-svc-with-port"] if f.kind is FrontendKind.NODE_PORT
    ]
    assert {f.port for f in nodeports} == {31000}
    # the requested LoadBalancer IP, and externalIPs on a LoadBalancer Service
    lb = {(f.kind, f.address) for f in by_service["nginx-loadbalancer-svc"]}
    assert (FrontendKind.LOAD_BALANCER, "1.2.3.4") in lb
    ext = {
        f.address
        for f in by_service["nginx-loadbalancer-with-externalips"]
        if f.kind is FrontendKind.EXTERNAL_IP
    }
    assert ext == {"192.168.198.13", "192.168.198.14"}
    # externalTrafficPolicy Local: only node-1's replicas for outside traffic
    local = [
        f
        for f in by_service["nginx-nodeport-svc-externaltrafficpolicy"]
        if f.kind is FrontendKind.NODE_PORT and f.scope is Scope.EXTERNAL
    ][0]
    assert local.preserve_client_ip and all(b.local for b in local.backends)
    assert state.health_checks[0].service == "default/nginx-loadbalancer-svc-externaltrafficpolicy"
    # affinity with the default and with a custom timeout
    assert by_service["nginx-clusterip-svc-with-sessionaffinity"][0].affinity_timeout == 10800
    assert by_service["nginx-clusterip-svc-sessionaffinityconfig"][0].affinity_timeout == 2
    # TCP and UDP on one port number, no pods selected: both reject
    assert sorted(str(f.protocol) for f in by_service["hdls"]) == ["TCP", "UDP"]
    assert all(not f.backends for f in by_service["hdls"])
    # selector-less Service with hand-written Endpoints
    assert [b.name for b in by_service["mysql-production"][0].backends] == ["192.168.1.25:3306"]
    # IPv6 and dual-stack
    assert [f.family for f in by_service["nginx-clusterip-svc-ipv6"]] == ["IPv6"]
    assert sorted(f.family for f in by_service["nginx-clusterip-svc-dualstack"]) == ["IPv4", "IPv6"]
    assert all(len(f.backends) == 3 for f in by_service["nginx-clusterip-svc-dualstack"])


@pytest.mark.parametrize(
    "quirk,kind,name,field,words",
    [
        (
            "externalname-with-affinity.yaml",
            "Service",
            "nginx-externalname-svc-with-sessionaffinity",
            "spec.sessionAffinity",
            "must be None when type is ExternalName",
        ),
        (
            "legacy-ipfamily.yaml",
            "Service",
            "nginx-clusterip-svc-ipfamily",
            "spec.ipFamily",
            "spec.ipFamilies: [IPv6]",
        ),
        (
            "misspelled-endpoints.yaml",
            "Endpoints",
            "hdls-external",
            "subsets[0].addresss",
            "did you mean 'addresses'",
        ),
        (
            "misspelled-endpoints.yaml",
            "Endpoints",
            "hdls-external",
            "subsets[0].addresss[0].IP",
            "did you mean 'ip'",
        ),
        (
            "nodeport-out-of-range.yaml",
            "Service",
            "hdls-nodeport",
            "spec.ports[0].nodePort",
            "8000 is outside the NodePort range 30000-32767",
        ),
    ],
)
def test_each_quirk_gets_a_precise_error_and_the_rest_still_loads(quirk, kind, name, field, words):
    cluster = load_cluster([EXAMPLES / "quirks" / quirk, EXAMPLES / "services"])
    hits = [d for d in errors_of(cluster) if (d.kind, d.name, d.field) == (kind, name, field)]
    assert len(hits) == 1, [str(d) for d in cluster.diagnostics]
    assert words in hits[0].message
    assert all(d.name == name for d in errors_of(cluster))  # nothing else broke
    state = translate(cluster.services, cluster.slices, cluster.nodes[0])
    baseline = load_cluster([EXAMPLES / "services"])
    expected = {
        f.service
        for f in translate(baseline.services, baseline.slices, baseline.nodes[0]).frontends
    }
    assert expected <= {f.service for f in state.frontends}


def test_yaml_syntax_error_names_the_file_and_other_files_load(tmp_path):
    bad = write(tmp_path, "kind: Service\nmetadata: [\n", "bad.yaml")
    good = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: ok}
        spec: {ports: [{port: 80}]}
    """,
        "good.yaml",
    )
    cluster = load_cluster([bad, good])
    (err,) = errors_of(cluster)
    assert err.kind == "File" and "bad.yaml" in err.name
    assert [s.name for s in cluster.services] == ["ok"]


def test_missing_path_and_document_without_kind(tmp_path):
    doc = write(tmp_path, "metadata: {name: x}\n")
    cluster = load_cluster([tmp_path / "nope.yaml", doc])
    assert sorted(d.message.split(";")[0] for d in errors_of(cluster)) == [
        "a document without `kind:` is not an object",
        "no such file or directory",
    ]


def test_allocation_is_deterministic_and_stable_when_services_are_added(tmp_path):
    base = "".join(
        f"""
---
apiVersion: v1
kind: Service
metadata: {{name: s{i}}}
spec: {{type: NodePort, ports: [{{port: 80}}]}}
"""
        for i in range(20)
    )
    one = load_cluster([write(tmp_path, base, "a.yaml")])
    again = load_cluster([write(tmp_path, base, "a.yaml")])
    more = load_cluster(
        [
            write(
                tmp_path,
                base.replace("s0}", "s0}")
                + """
---
apiVersion: v1
kind: Service
metadata: {name: extra}
spec: {type: NodePort, ports: [{port: 80}]}
""",
                "a.yaml",
            )
        ]
    )

    def alloc(c):
        return {s.name: (s.cluster_ips, s.ports[0].node_port) for s in c.services}

    assert alloc(one) == alloc(again)
    assert {k: v for k, v in alloc(more).items() if k != "extra"} == alloc(one)
    ips = [ip for s in more.services for ip in s.cluster_ips]
    ports = [s.ports[0].node_port for s in more.services]
    assert len(set(ips)) == len(ips) and len(set(ports)) == len(ports)
    assert all(30000 <= p <= 32767 for p in ports)


def test_conflicting_fixed_cluster_ip_and_node_port_reject_the_later_service(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {clusterIP: 10.96.5.5, type: NodePort, ports: [{port: 80, nodePort: 30500}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec: {clusterIP: 10.96.5.5, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: c}
        spec: {type: NodePort, ports: [{port: 80, nodePort: 30500}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: d}
        spec: {clusterIP: 172.16.0.1, ports: [{port: 80}]}
    """,
    )
    cluster = load_cluster([path])
    assert [s.name for s in cluster.services] == ["a"]
    msgs = {d.name: d.message for d in errors_of(cluster)}
    assert "already allocated to Service default/a" in msgs["b"]
    assert "already allocated to Service default/a" in msgs["c"]
    assert "not in the service CIDRs" in msgs["d"]


def test_tcp_and_udp_on_one_port_share_the_node_port(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: dns}
        spec:
          type: NodePort
          ports:
          - {name: tcp, port: 53, protocol: TCP}
          - {name: udp, port: 53, protocol: UDP}
    """,
    )
    (svc,) = load_cluster([path]).services
    assert svc.ports[0].node_port == svc.ports[1].node_port


def test_dual_stack_policies(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: prefer}
        spec: {ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: require}
        spec: {ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}
    """,
    )
    got = {s.name: s.ip_families for s in load_cluster([path]).services}
    assert got == {"prefer": ("IPv4", "IPv6"), "require": ("IPv6", "IPv4")}
    single = load_cluster([path], ClusterConfig(service_cidrs=("10.96.0.0/12",)))
    assert [s.name for s in single.services] == ["prefer"]
    assert "RequireDualStack" in errors_of(single)[0].message


def test_named_target_port_resolves_per_pod_and_missing_name_warns(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: a, labels: {app: web}}
        spec:
          nodeName: node-1
          containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b, labels: {app: web}}
        spec:
          nodeName: node-2
          containers: [{name: c, ports: [{name: web, containerPort: 9090}]}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports:
          - {name: http, port: 80, targetPort: web}
          - {name: admin, port: 81, targetPort: admin}
    """,
    )
    cluster = load_cluster([path])
    state = translate(cluster.services, cluster.slices, cluster.nodes[0])
    http = [f for f in state.frontends if f.port_name == "http"][0]
    assert sorted((b.target, b.port) for b in http.backends) == [("a", 8080), ("b", 9090)]
    admin = [f for f in state.frontends if f.port_name == "admin"][0]
    assert admin.backends == ()
    (warn,) = [d for d in cluster.diagnostics if d.level is Level.WARNING]
    assert warn.field == "spec.ports[1].targetPort" and "'admin'" in warn.message


def test_pods_not_ready_and_terminating(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: ready, labels: {app: web}}
        spec: {containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: starting, labels: {app: web}}
        spec: {containers: [{name: c}]}
        status: {conditions: [{type: Ready, status: "False"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: leaving, labels: {app: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
        spec: {containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, ports: [{port: 80}]}
    """,
    )
    cluster = load_cluster([path])
    fe = translate(cluster.services, cluster.slices, cluster.nodes[0]).frontends[0]
    assert [b.target for b in fe.backends] == ["ready"]
    # neither takes new flows; both keep any they have (the unready one: a readiness blip)
    assert [b.target for b in fe.draining] == ["leaving", "starting"]


def test_deployment_replicas_spread_over_nodes_with_unique_ips(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 6
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: broken}
        spec:
          selector: {matchLabels: {app: x}}
          template: {metadata: {labels: {app: y}}}
    """,
    )
    cluster = load_cluster([path], ClusterConfig(nodes=3))
    per_node = {}
    for pod in cluster.pods:
        per_node[pod.node_name] = per_node.get(pod.node_name, 0) + 1
    assert per_node == {"node-1": 2, "node-2": 2, "node-3": 2}
    ips = [ip for p in cluster.pods for ip in p.ips]
    assert len(ips) == len(set(ips)) == 12  # one IPv4 and one IPv6 each
    assert any(d.kind == "Deployment" and d.field == "spec.selector" for d in errors_of(cluster))


def test_endpoints_for_a_service_with_a_selector_are_ignored(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web}
        subsets: [{addresses: [{ip: 10.1.1.1}], ports: [{port: 80}]}]
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: orphan}
        subsets: [{addresses: [{ip: 10.1.1.2}], ports: [{port: 80}]}]
    """,
    )
    cluster = load_cluster([path])
    warnings = {d.name: d.message for d in cluster.diagnostics if d.level is Level.WARNING}
    assert "selector" in warnings["web"] and "no Service" in warnings["orphan"]
    fe = translate(cluster.services, cluster.slices, cluster.nodes[0]).frontends[0]
    assert fe.backends == ()


def test_later_definition_wins_with_a_warning(tmp_path):
    a = write(
        tmp_path, "kind: Service\nmetadata: {name: w}\nspec: {ports: [{port: 80}]}\n", "a.yaml"
    )
    b = write(
        tmp_path, "kind: Service\nmetadata: {name: w}\nspec: {ports: [{port: 81}]}\n", "b.yaml"
    )
    cluster = load_cluster([a, b])
    assert [p.port for p in cluster.services[0].ports] == [81]
    assert any("defined twice" in d.message for d in cluster.diagnostics)


def test_list_kind_and_json(tmp_path):
    path = tmp_path / "l.json"
    path.write_text(
        '{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "j"},'
        ' "spec": {"ports": [{"port": 80}]}}]}'
    )
    assert [s.name for s in load_cluster([path]).services] == ["j"]


TOPOLOGY = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 4
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web, annotations: ANNOTATIONS}
    spec: {selector: {app: web}, ports: [{port: 80}], trafficDistribution: DISTRIBUTION}
"""


@pytest.mark.parametrize(
    "distribution,annotations,hinted",
    [
        ("PreferSameNode", "{}", "node"),
        ("PreferSameZone", "{}", "zone"),
        ("PreferClose", "{}", "zone"),
        ("null", "{}", ""),
        ("PreferSameNode", "{service.kubernetes.io/topology-mode: Auto}", ""),
    ],
)
def test_the_endpointslice_controller_writes_hints_and_each_node_follows_them(
    tmp_path, distribution, annotations, hinted
):
    """As kube-controller-manager's trafficdist heuristics: a ready endpoint is hinted for
    its own zone (and under PreferSameNode its own node). 4 pods over 4 nodes in zones
    a/b/a/b: node-1 sends to its own pod, or to its zone's two, or to all four."""
    text = TOPOLOGY.replace("DISTRIBUTION", distribution).replace("ANNOTATIONS", annotations)
    cluster = load_cluster([write(tmp_path, text)], ClusterConfig(nodes=4))
    assert errors_of(cluster) == []
    hints = {(e.node_name, e.zone_hints, e.node_hints) for s in cluster.slices for e in s.endpoints}
    zone = {n.name: n.zone for n in cluster.nodes}
    if hinted == "node":
        assert hints == {(n, (zone[n],), (n,)) for n in zone}
    elif hinted == "zone":
        assert hints == {(n, (zone[n],), ()) for n in zone}
    else:
        assert hints == {(n, (), ()) for n in zone}
    if "Auto" in annotations:
        assert any("topology-mode Auto" in d.message for d in cluster.diagnostics)
    node1 = next(n for n in cluster.nodes if n.name == "node-1")
    fe = translate(cluster.services, cluster.slices, node1).frontends[0]
    nodes = sorted(b.node_name for b in fe.backends)
    same_zone = sorted(n for n in zone if zone[n] == node1.zone)
    assert nodes == {"node": ["node-1"], "zone": same_zone, "": sorted(zone)}[hinted]


def test_a_template_node_name_binds_every_replica_to_that_node(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: pinned}
        spec:
          replicas: 3
          selector: {matchLabels: {app: pinned}}
          template:
            metadata: {labels: {app: pinned}}
            spec: {nodeName: node-2, containers: [{name: c}]}
    """,
    )
    cluster = load_cluster([path], ClusterConfig(nodes=3))
    assert errors_of(cluster) == []
    assert [p.node_name for p in cluster.pods] == ["node-2"] * 3


def test_terminal_pods_are_in_no_endpoint_slice(tmp_path):
    """The EndpointSlice controller's ShouldPodBeInEndpoints: a Succeeded or Failed pod is
    no endpoint, ready condition or not (it was a ready endpoint here)."""
    pods = "".join(
        f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, labels: {{app: web}}}}
        spec: {{containers: [{{name: c}}]}}
        status: {{phase: {phase}, conditions: [{{type: Ready, status: "{ready}"}}]}}
        """
        for name, phase, ready in (
            ("running", "Running", "True"),
            ("failed", "Failed", "True"),
            ("done", "Succeeded", "False"),
        )
    )
    path = write(
        tmp_path,
        pods
        + """
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, ports: [{port: 80}]}
    """,
    )
    cluster = load_cluster([path])
    assert {e.target for s in cluster.slices for e in s.endpoints} == {"running"}


def test_publish_not_ready_addresses_keeps_a_terminating_pod_ready(tmp_path):
    """podToEndpoint: ready = publishNotReadyAddresses or (serving and not terminating)."""
    path = write(
        tmp_path,
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: leaving, labels: {app: db}, deletionTimestamp: "2026-01-01T00:00:00Z"}
        spec: {containers: [{name: c}]}
        status: {conditions: [{type: Ready, status: "False"}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {selector: {app: db}, ports: [{port: 80}], publishNotReadyAddresses: true}
    """,
    )
    cluster = load_cluster([path])
    conditions = {(e.ready, e.serving, e.terminating) for s in cluster.slices for e in s.endpoints}
    assert conditions == {(True, True, True)}
    fe = translate(cluster.services, cluster.slices, cluster.nodes[0]).frontends[0]
    assert [b.target for b in fe.backends] == ["leaving"]
