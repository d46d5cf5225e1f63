"""kube-proxy's own packet-flow tables for traffic policies and terminating endpoints, run
against xlb's model.

Ported as data from kubernetes pkg/proxy/nftables/proxier_test.go: TestInternalTrafficPolicy,
TestTerminatingEndpointsTrafficPolicyLocal, TestTerminatingEndpointsTrafficPolicyCluster,
TestInternalExternalMasquerade (its "base" case: a working local-traffic detector, no
--masquerade-all), TestClusterIPGeneral (ports, protocols, the cluster-ips check of a port
not served and of an unallocated address), TestNoEndpointsReject and TestLoadBalancer
(loadBalancerSourceRanges from outside, from a pod and from the node). The names, addresses,
conditions and expected outputs are kube-proxy's; the first three also run kube-proxy's
follow-up (the slice deleted: every flow REJECT).

A flow's output is the set of endpoints a new connection may reach ("ip:port, ..."), "DROP"
or "REJECT". xlb answers a flow by the frontend that matches it: a ClusterIP, NodePort or
LoadBalancer IP of the socket hooks (scope internal: the node's own processes and pods) or
of XDP (scope external: from outside), its new-flow backends and its no-backend verdict,
its source ranges (judged by the pod's address, or the node's for the node's own sockets),
and, where no frontend matches, the service address space (a live ClusterIP: REJECT; the
rest of the service CIDR, 172.30.0.0/16 in kube-proxy's fake proxier: DROP).

Where xlb differs on purpose, the row says so in XLB_DIFFERS and the test checks xlb's
documented behaviour instead: xlb does not serve ClusterIPs to traffic from outside the node
(kube-proxy DNATs a ClusterIP however the packet arrived; the README's semantics section),
and it balances no SCTP (this kernel has none). Masquerading is not compared: xlb keeps the
client address wherever it can (README).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controlplane.model import translate
from controlplane.model.objects import Node
from controlplane.model.parse import parse_endpoint_slice, parse_service
from controlplane.model.state import FrontendKind, NoBackend, Scope
from controlplane.model.translate import with_address_space

TEST_NODE = "test-node"  # kube-proxy's testNodeName
NODE_IP = "192.168.0.2"  # testNodeIP
EXTERNAL = "203.0.113.2"  # testExternalClient
BLOCKED = "203.0.113.130"  # testExternalClientBlocked
SERVICE_CIDR = "172.30.0.0/16"  # the fake proxier's service range
POD = "10.0.0.2"  # a pod on this node


def endpoint(ip: str, node: str, ready: bool = True, serving: bool | None = None,
             terminating: bool | None = None) -> dict[str, Any]:  # fmt: skip
    conditions: dict[str, bool] = {"ready": ready}
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [ip], "nodeName": node, "conditions": conditions}


def rst(ip: str, node: str = TEST_NODE) -> dict[str, Any]:
    """ready, serving, not terminating"""
    return endpoint(ip, node, True, True, False)


def term(ip: str, node: str = TEST_NODE, serving: bool = True) -> dict[str, Any]:
    """terminating; serving or not"""
    return endpoint(ip, node, False, serving, True)


def service(ns: str, name: str, cluster_ip: str, **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", None)
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "selector": {"foo": "bar"}, **spec},
    }
    if status:
        obj["status"] = status
    return obj


def lb(ns: str, name: str, cluster_ip: str, ingress: str, node_port: int = 0, port_name: str = "",
       **spec: Any) -> dict[str, Any]:  # fmt: skip
    port: dict[str, Any] = {"name": port_name, "port": 80, "targetPort": 80, "protocol": "TCP"}
    if node_port:
        port["nodePort"] = node_port
    ingress_status = {"loadBalancer": {"ingress": [{"ip": ingress}]}}
    if spec.get("externalTrafficPolicy") == "Local":
        # kube-proxy's fake sets it on Cluster Services too; the API server refuses that
        spec["healthCheckNodePort"] = 30000
    return service(ns, name, cluster_ip, type="LoadBalancer", ports=[port],
                   status=ingress_status, **spec)  # fmt: skip


def slice_of(ns: str, name: str, endpoints: list[dict], port_name: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }  # fmt: skip


# (flow name, source, destination address, destination port, kube-proxy's output)
Flow = tuple[str, str, str, int, str]

ITP_SVC = dict(ports=[{"name": "", "port": 80, "protocol": "TCP"}])
TERMINATING_LOCAL = lb("ns1", "svc1", "172.30.1.1", "1.2.3.4", externalTrafficPolicy="Local")
TERMINATING_CLUSTER = lb("ns1", "svc1", "172.30.1.1", "1.2.3.4", externalTrafficPolicy="Cluster")
POD_TO_CIP = ("pod to clusterIP", POD, "172.30.1.1", 80)
EXT_TO_LB = ("external to LB", EXTERNAL, "1.2.3.4", 80)

# (test, case, services, slices, flows)
CASES: list[tuple[str, str, list[dict], list[dict], list[Flow]]] = [
    # -- TestInternalTrafficPolicy ---------------------------------------------------------------
    ("TestInternalTrafficPolicy", "internalTrafficPolicy is cluster",
     [service("ns1", "svc1", "172.30.1.1", internalTrafficPolicy="Cluster", **ITP_SVC)],
     [slice_of("ns1", "svc1", [endpoint("10.0.1.1", TEST_NODE), endpoint("10.0.1.2", "node1"),
                               endpoint("10.0.1.3", "node2")])],
     [("pod to ClusterIP hits all endpoints", POD, "172.30.1.1", 80,
       "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80")]),
    ("TestInternalTrafficPolicy", "internalTrafficPolicy is local and there is one local endpoint",
     [service("ns1", "svc1", "172.30.1.1", internalTrafficPolicy="Local", **ITP_SVC)],
     [slice_of("ns1", "svc1", [endpoint("10.0.1.1", TEST_NODE), endpoint("10.0.1.2", "node1"),
                               endpoint("10.0.1.3", "node2")])],
     [("pod to ClusterIP hits only local endpoint", POD, "172.30.1.1", 80, "10.0.1.1:80")]),
    ("TestInternalTrafficPolicy",
     "internalTrafficPolicy is local and there are multiple local endpoints",
     [service("ns1", "svc1", "172.30.1.1", internalTrafficPolicy="Local", **ITP_SVC)],
     [slice_of("ns1", "svc1", [endpoint("10.0.1.1", TEST_NODE), endpoint("10.0.1.2", TEST_NODE),
                               endpoint("10.0.1.3", "node2")])],
     [("pod to ClusterIP hits all local endpoints", POD, "172.30.1.1", 80,
       "10.0.1.1:80, 10.0.1.2:80")]),
    ("TestInternalTrafficPolicy", "internalTrafficPolicy is local and there are no local endpoints",
     [service("ns1", "svc1", "172.30.1.1", internalTrafficPolicy="Local", **ITP_SVC)],
     [slice_of("ns1", "svc1", [endpoint("10.0.1.1", "node0"), endpoint("10.0.1.2", "node1"),
                               endpoint("10.0.1.3", "node2")])],
     [("no endpoints", POD, "172.30.1.1", 80, "DROP")]),
    # -- TestTerminatingEndpointsTrafficPolicyLocal ----------------------------------------------
    ("TestTerminatingEndpointsTrafficPolicyLocal", "ready endpoints exist",
     [TERMINATING_LOCAL],
     [slice_of("ns1", "svc1", [rst("10.0.1.1"), rst("10.0.1.2"), term("10.0.1.3"),
                               term("10.0.1.4", serving=False), rst("10.0.1.5", "node-1")])],
     [(*POD_TO_CIP, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
      (*EXT_TO_LB, "10.0.1.1:80, 10.0.1.2:80")]),
    ("TestTerminatingEndpointsTrafficPolicyLocal", "only terminating endpoints exist",
     [TERMINATING_LOCAL],
     [slice_of("ns1", "svc1", [term("10.0.1.2"), term("10.0.1.3"),
                               term("10.0.1.4", serving=False), rst("10.0.1.5", "node-1")])],
     [(*POD_TO_CIP, "10.0.1.5:80"), (*EXT_TO_LB, "10.0.1.2:80, 10.0.1.3:80")]),
    ("TestTerminatingEndpointsTrafficPolicyLocal", "terminating endpoints on remote node",
     [TERMINATING_LOCAL],
     [slice_of("ns1", "svc1", [term("10.0.1.5", "node-1")])],
     [(*POD_TO_CIP, "10.0.1.5:80"),
      ("external to LB, no locally-usable endpoints", EXTERNAL, "1.2.3.4", 80, "DROP")]),
    ("TestTerminatingEndpointsTrafficPolicyLocal", "no usable endpoints on any node",
     [TERMINATING_LOCAL],
     [slice_of("ns1", "svc1", [term("10.0.1.5", serving=False),
                               term("10.0.1.5", "node-1", serving=False)])],
     [("pod to clusterIP, no usable endpoints", POD, "172.30.1.1", 80, "REJECT"),
      ("external to LB, no usable endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT")]),
    # -- TestTerminatingEndpointsTrafficPolicyCluster --------------------------------------------
    ("TestTerminatingEndpointsTrafficPolicyCluster", "ready endpoints exist",
     [TERMINATING_CLUSTER],
     [slice_of("ns1", "svc1", [rst("10.0.1.1"), rst("10.0.1.2"), term("10.0.1.3", "another-node"),
                               term("10.0.1.4", "another-node", serving=False),
                               rst("10.0.1.5", "another-node")])],
     [(*POD_TO_CIP, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
      (*EXT_TO_LB, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80")]),
    ("TestTerminatingEndpointsTrafficPolicyCluster", "only terminating endpoints exist",
     [TERMINATING_CLUSTER],
     [slice_of("ns1", "svc1", [term("10.0.1.2"), term("10.0.1.3"),
                               term("10.0.1.4", "another-node", serving=False),
                               term("10.0.1.5", "another-node")])],
     [(*POD_TO_CIP, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
      (*EXT_TO_LB, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80")]),
    ("TestTerminatingEndpointsTrafficPolicyCluster", "terminating endpoints on remote node",
     [TERMINATING_CLUSTER],
     [slice_of("ns1", "svc1", [term("10.0.1.5", "node-1")])],
     [(*POD_TO_CIP, "10.0.1.5:80"), (*EXT_TO_LB, "10.0.1.5:80")]),
    ("TestTerminatingEndpointsTrafficPolicyCluster", "no usable endpoints on any node",
     [TERMINATING_CLUSTER],
     [slice_of("ns1", "svc1", [term("10.0.1.5", serving=False),
                               term("10.0.1.5", "node-1", serving=False)])],
     [(*POD_TO_CIP, "REJECT"), (*EXT_TO_LB, "REJECT")]),
]  # fmt: skip

# -- TestInternalExternalMasquerade, "base" --------------------------------------------------------
MASQ_SERVICES = [
    lb("ns1", "svc1", "172.30.0.41", "1.2.3.4", node_port=3001, port_name="p80"),
    lb("ns2", "svc2", "172.30.0.42", "5.6.7.8", node_port=3002, port_name="p80",
       externalTrafficPolicy="Local"),
    lb("ns3", "svc3", "172.30.0.43", "9.10.11.12", node_port=3003, port_name="p80",
       internalTrafficPolicy="Local"),
]  # fmt: skip
MASQ_SLICES = [
    slice_of(f"ns{i}", f"svc{i}", [endpoint(f"10.180.0.{i}", TEST_NODE, True),
                                   endpoint(f"10.180.1.{i}", "remote", True)], port_name="p80")
    for i in (1, 2, 3)
]  # fmt: skip
BOTH = {i: f"10.180.0.{i}:80, 10.180.1.{i}:80" for i in (1, 2, 3)}
MASQ_FLOWS: list[Flow] = [
    ("pod to ClusterIP", POD, "172.30.0.41", 80, BOTH[1]),
    ("pod to NodePort", POD, NODE_IP, 3001, BOTH[1]),
    ("pod to LB", POD, "1.2.3.4", 80, BOTH[1]),
    ("node to ClusterIP", NODE_IP, "172.30.0.41", 80, BOTH[1]),
    ("node to NodePort", NODE_IP, NODE_IP, 3001, BOTH[1]),
    ("node to LB", NODE_IP, "1.2.3.4", 80, BOTH[1]),
    ("external to ClusterIP", EXTERNAL, "172.30.0.41", 80, BOTH[1]),
    ("external to NodePort", EXTERNAL, NODE_IP, 3001, BOTH[1]),
    ("external to LB", EXTERNAL, "1.2.3.4", 80, BOTH[1]),
    ("pod to ClusterIP with eTP:Local", POD, "172.30.0.42", 80, BOTH[2]),
    ("pod to NodePort with eTP:Local", POD, NODE_IP, 3002, BOTH[2]),
    ("pod to LB with eTP:Local", POD, "5.6.7.8", 80, BOTH[2]),
    ("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, BOTH[2]),
    ("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, BOTH[1]),
    ("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, BOTH[2]),
    ("external to ClusterIP with eTP:Local", EXTERNAL, "172.30.0.42", 80, BOTH[2]),
    ("external to NodePort with eTP:Local", EXTERNAL, NODE_IP, 3002, "10.180.0.2:80"),
    ("external to LB with eTP:Local", EXTERNAL, "5.6.7.8", 80, "10.180.0.2:80"),
    ("pod to ClusterIP with iTP:Local", POD, "172.30.0.43", 80, "10.180.0.3:80"),
    ("pod to NodePort with iTP:Local", POD, NODE_IP, 3003, BOTH[3]),
    ("pod to LB with iTP:Local", POD, "9.10.11.12", 80, BOTH[3]),
    ("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80"),
    ("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, BOTH[3]),
    ("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, BOTH[3]),
    ("external to ClusterIP with iTP:Local", EXTERNAL, "172.30.0.43", 80, "10.180.0.3:80"),
    ("external to NodePort with iTP:Local", EXTERNAL, NODE_IP, 3003, BOTH[3]),
    ("external to LB with iTP:Local", EXTERNAL, "9.10.11.12", 80, BOTH[3]),
]
CASES.append(("TestInternalExternalMasquerade", "base", MASQ_SERVICES, MASQ_SLICES, MASQ_FLOWS))

# -- TestClusterIPGeneral ----------------------------------------------------------------------
GENERAL_SERVICES = [
    service("ns1", "svc1", "172.30.0.41", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
    service("ns2", "svc2", "172.30.0.42", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443},
        {"name": "dns-udp", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
        {"name": "dns-sctp", "port": 53, "protocol": "SCTP"},
    ]),
]  # fmt: skip
GENERAL_SLICES = [
    {**slice_of("ns1", "svc1", [endpoint("10.180.0.1", TEST_NODE)]),
     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    {**slice_of("ns2", "svc2", [endpoint("10.180.0.1", TEST_NODE),
                                endpoint("10.180.2.1", "node2")]),
     "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
               {"name": "https", "port": 8443, "protocol": "TCP"},
               {"name": "dns-udp", "port": 53, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
               {"name": "dns-sctp", "port": 53, "protocol": "SCTP"}]},
]  # fmt: skip
CASES.append(("TestClusterIPGeneral", "", GENERAL_SERVICES, GENERAL_SLICES, [
    ("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
    ("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80"),
    ("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80,
     "10.180.0.1:80, 10.180.2.1:80"),
    ("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443,
     "10.180.0.1:8443, 10.180.2.1:8443"),
    ("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53,
     "10.180.0.1:5353, 10.180.2.1:5353"),
    ("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42",
     (53, "UDP"), "10.180.0.1:53, 10.180.2.1:53"),
    ("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42",
     (53, "SCTP"), "10.180.0.1:53, 10.180.2.1:53"),
    ("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", (80, "UDP"),
     "REJECT"),
    ("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, "REJECT"),
    ("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, "DROP"),
]))  # fmt: skip

# -- TestNoEndpointsReject -------------------------------------------------------------------
NO_ENDPOINTS = lb("ns1", "svc1", "172.30.0.41", "1.2.3.4", node_port=3001, port_name="p80",
                  externalIPs=["192.168.99.11"])  # fmt: skip
CASES.append(("TestNoEndpointsReject", "", [NO_ENDPOINTS], [], [
    ("pod to cluster IP with no endpoints", POD, "172.30.0.41", 80, "REJECT"),
    ("external to external IP with no endpoints", EXTERNAL, "192.168.99.11", 80, "REJECT"),
    ("pod to NodePort with no endpoints", POD, NODE_IP, 3001, "REJECT"),
    ("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 3001, "REJECT"),
    ("pod to LoadBalancer IP with no endpoints", POD, "1.2.3.4", 80, "REJECT"),
    ("external to LoadBalancer IP with no endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT"),
]))  # fmt: skip

# -- TestLoadBalancer ------------------------------------------------------------------------
RANGED = lb("ns1", "svc1", "172.30.0.41", "1.2.3.4", node_port=3001, port_name="p80",
            loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"])  # fmt: skip
RANGED["status"]["loadBalancer"]["ingress"].append({"ip": "5.6.7.8"})
RANGED_SLICE = {**slice_of("ns1", "svc1", [{"addresses": ["10.180.0.1"]}]),
                "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}  # fmt: skip
EP = "10.180.0.1:80"
CASES.append(("TestLoadBalancer", "", [RANGED], [RANGED_SLICE], [
    ("pod to cluster IP", POD, "172.30.0.41", 80, EP),
    ("external to nodePort", EXTERNAL, NODE_IP, 3001, EP),
    ("nodePort bypasses LoadBalancerSourceRanges", BLOCKED, NODE_IP, 3001, EP),
    ("accepted external to LB1", EXTERNAL, "1.2.3.4", 80, EP),
    ("accepted external to LB2", EXTERNAL, "5.6.7.8", 80, EP),
    ("blocked external to LB1", BLOCKED, "1.2.3.4", 80, "DROP"),
    ("blocked external to LB2", BLOCKED, "5.6.7.8", 80, "DROP"),
    ("pod to LB1 (blocked by LoadBalancerSourceRanges)", POD, "1.2.3.4", 80, "DROP"),
    ("pod to LB2 (blocked by LoadBalancerSourceRanges)", POD, "5.6.7.8", 80, "DROP"),
    ("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, EP),
    ("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, EP),
    # the node's own connection to a LB IP that the node holds as a local address: xlb
    # judges every socket of the node as the node's address, which the ranges hold
    ("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, EP),
    ("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, EP),
]))  # fmt: skip

# Flows xlb answers otherwise, on purpose (README, "Service semantics the model implements").
XLB_DIFFERS = {
    "clusterIP with TCP, UDP, and SCTP on same port (SCTP)": "REJECT",  # no SCTP balancing
    "external to ClusterIP": "not served from outside",
    "external to ClusterIP with eTP:Local": "not served from outside",
    "external to ClusterIP with iTP:Local": "not served from outside",
}

NODE = Node(name=TEST_NODE, addresses=(NODE_IP,))


def answer(services: list[dict], slices: list[dict], flow: Flow) -> str:
    """What xlb's model does with a flow: the backends of the frontend that matches it
    (sorted as kube-proxy writes them), DROP, REJECT, or "not served from outside"."""
    parsed, eps = [], []
    for obj in services:
        svc, diags = parse_service(obj)
        assert svc is not None, [str(d) for d in diags]
        parsed.append(svc)
    for obj in slices:
        sl, diags = parse_endpoint_slice(obj)
        assert sl is not None, [str(d) for d in diags]
        eps.append(sl)
    state = with_address_space(translate(parsed, eps, NODE), parsed, [SERVICE_CIDR])
    _, source, address, port, _ = flow
    port, proto = port if isinstance(port, tuple) else (port, "TCP")
    scope = Scope.EXTERNAL if source in (EXTERNAL, BLOCKED) else Scope.INTERNAL
    found = [f for f in state.frontends if f.key == (address, port, proto, scope)]
    if not found:
        if scope is Scope.EXTERNAL:
            return "not served from outside"
        if address in state.cluster_ips:
            return "REJECT"  # a live ClusterIP, a port it does not serve
        if ipaddress.ip_address(address) in ipaddress.ip_network(SERVICE_CIDR):
            return "DROP"  # an unallocated address of the service range
        return "no frontend"
    (fe,) = found
    if fe.kind is FrontendKind.CLUSTER_IP:
        assert scope is Scope.INTERNAL
    # the node's own sockets are judged as the node's address (sock_lb.c), a pod's as its own
    own = source == NODE_IP or any(source in s.ingress_ips for s in parsed)
    client = ipaddress.ip_address(NODE_IP if own and scope is Scope.INTERNAL else source)
    if fe.source_ranges and not any(client in ipaddress.ip_network(r) for r in fe.source_ranges):
        return "DROP"
    if not fe.backends:
        return "DROP" if fe.no_backend is NoBackend.DROP else "REJECT"
    ips = sorted(fe.backends, key=lambda b: tuple(int(x) for x in b.address.split(".")))
    return ", ".join(f"{b.address}:{b.port}" for b in ips)


FOLLOWED_UP = {
    "TestInternalTrafficPolicy",
    "TestTerminatingEndpointsTrafficPolicyLocal",
    "TestTerminatingEndpointsTrafficPolicyCluster",
}
ROWS = [
    pytest.param(services, slices, flow, id=f"{test}: {case}: {flow[0]}")
    for test, case, services, slices, flows in CASES
    for flow in flows
]
DELETED = [
    pytest.param(services, flow, id=f"{test}: {case}: {flow[0]} after endpoints deleted")
    for test, case, services, _, flows in CASES
    if test in FOLLOWED_UP  # kube-proxy's follow-up is theirs
    for flow in flows
]


@pytest.mark.parametrize("services,slices,flow", ROWS)
def test_each_flow_reaches_what_kube_proxy_reaches(services, slices, flow):
    expected = XLB_DIFFERS.get(flow[0], flow[4])
    assert answer(services, slices, flow) == expected


@pytest.mark.parametrize("services,flow", DELETED)
def test_each_flow_is_rejected_once_the_endpoints_are_deleted(services, flow):
    assert answer(services, [], flow) == "REJECT"


def test_the_table_is_whole():
    """Every case of the seven kube-proxy tests is here (guards against a row lost in an edit)."""
    per_test = {t: sum(1 for c in CASES if c[0] == t) for t, *_ in CASES}
    assert per_test == {
        "TestInternalTrafficPolicy": 4,
        "TestTerminatingEndpointsTrafficPolicyLocal": 4,
        "TestTerminatingEndpointsTrafficPolicyCluster": 4,
        "TestInternalExternalMasquerade": 1,
        "TestClusterIPGeneral": 1,
        "TestNoEndpointsReject": 1,
        "TestLoadBalancer": 1,
    }
    flows = {c[0]: len(c[4]) for c in CASES}  # (the single-case tests)
    singles = ("TestInternalExternalMasquerade", "TestClusterIPGeneral",
               "TestNoEndpointsReject", "TestLoadBalancer")  # fmt: skip
    assert [flows[t] for t in singles] == [27, 10, 6, 13]
