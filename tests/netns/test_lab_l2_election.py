"""The election's endpoint rule in a 2-node dual-stack lab: a LoadBalancer Service under
externalTrafficPolicy Local whose only endpoint is terminating but still serving (a pod in
its grace period, the last of a rollout) stays announced by the endpoint's node, in both
families, and answers, as the node's NodePort still serves it. The election counted ready
endpoints only and the address went dark (nobody answered ARP or NDP) while the pod still
served (MetalLB's EndpointCanServe accepts ready or serving). Once the endpoint stops
serving, no node may announce the address."""

from __future__ import annotations

import subprocess
import textwrap
import time

import pytest

from controlplane.sources.manifests import load_cluster
from tests.netns.neighbours import ask, macs_of
from tests.netns.test_lab import get, lan_port, running_lab

WEB = textwrap.dedent("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: both}
    spec:
      selector: {matchLabels: {app: both}}
      replicas: 2
      template:
        metadata: {labels: {app: both}}
        spec: {containers: [{name: both, ports: [{containerPort: 80}]}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: both}
    spec:
      selector: {app: both}
      ports: [{port: 80}]
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      replicas: 1
      template:
        metadata: {labels: {app: web}}
        spec: {containers: [{name: web, ports: [{containerPort: 80}]}]}
""")


def last_endpoint(pod, serving: bool) -> str:
    """A selector-less Local LoadBalancer Service whose EndpointSlices (one a family) hold
    the pod alone, terminating, and serving or not."""
    out = textwrap.dedent("""
        apiVersion: v1
        kind: Service
        metadata: {name: draining}
        spec:
          type: LoadBalancer
          ipFamilyPolicy: RequireDualStack
          externalTrafficPolicy: Local
          ports: [{name: http, port: 8000, targetPort: 80}]
    """)
    for family, ip in (("IPv4", pod.ips[0]), ("IPv6", pod.ips[1])):
        out += textwrap.dedent(f"""
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: draining-{family.lower()}
              labels: {{kubernetes.io/service-name: draining}}
            addressType: {family}
            ports: [{{name: http, port: 80}}]
            endpoints:
            - addresses: ["{ip}"]
              nodeName: {pod.node}
              conditions: {{ready: false, serving: {str(serving).lower()}, terminating: true}}
        """)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("election")
    (d / "web.yaml").write_text(WEB)
    with running_lab(d, nodes=2) as lab:
        lab.dir_manifests = d
        yield lab


def draining_ips(lab) -> list[str]:
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    return sorted(ip for s in c.services if s.name == "draining" for ip in s.ingress_ips)


def answered_by(lab, ips: list[str]) -> dict[str, set[str]]:
    heard = ask(lab.client_ns, ips, count=3, interval=0.1).rounds(macs_of(lab))
    return {ip: heard.get((2, ip), set()) for ip in ips}


def test_a_terminating_but_serving_last_endpoint_keeps_its_address_announced(lab):
    pod = next(p for p in lab.load().pods if p.labels.get("app") == "web")
    assert len(pod.ips) == 2
    manifests = lab.dir_manifests
    (manifests / "zz-draining.yaml").write_text(last_endpoint(pod, serving=True))
    lab.apply()
    deadline = time.monotonic() + 20
    while len(ips := draining_ips(lab)) < 2:
        assert time.monotonic() < deadline, "no LoadBalancer IPs for the Service"
        time.sleep(0.2)
    assert any(":" in ip for ip in ips)
    deadline = time.monotonic() + 10
    while (who := answered_by(lab, ips)) != {ip: {pod.node} for ip in ips}:
        assert time.monotonic() < deadline, f"not announced by {pod.node} alone: {who}"
    for ip in ips:
        assert get(lab, "client", ip, 8000)[0] == pod.name
    print(f"{ips}: announced by {pod.node}, served by the terminating {pod.name}")

    (manifests / "zz-draining.yaml").write_text(last_endpoint(pod, serving=False))
    lab.apply()
    deadline = time.monotonic() + 10
    while (who := answered_by(lab, ips)) != {ip: set() for ip in ips}:
        assert time.monotonic() < deadline, f"still announced with nothing serving: {who}"


def test_endpoints_on_a_node_the_gossip_declares_dead_drain_at_once(lab):
    pods = {p.node: p.name for p in lab.load().pods if p.labels.get("app") == "both"}
    assert set(pods) == {"node-1", "node-2"}, pods  # one on each node
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    address = next(s.cluster_ips[0] for s in c.services if s.name == "both")
    seen = {get(lab, "node-2", address, 80)[0] for _ in range(12)}
    assert seen == set(pods.values())  # both, while both nodes live
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")
    lan_ns, port = lan_port(lab, node1.netns)
    log = lab.dir / "agent-node-2.log"
    offset = log.stat().st_size
    subprocess.run(["ip", "-n", lan_ns, "link", "set", port, "down"], check=True)
    try:
        start = time.monotonic()
        while "member node-1 is dead" not in log.read_text()[offset:]:
            assert time.monotonic() - start < 5, "node-2 never declared node-1 dead"
            time.sleep(0.02)
        died = time.monotonic() - start
        # every new connection from now on lands on node-2's pod (the drain is one sync)
        time.sleep(0.3)
        served = [get(lab, "node-2", address, 80)[0] for _ in range(20)]
        print(f"node-1 declared dead {died:.2f}s after its cable was pulled; then 20 of 20 "
              f"new connections on {set(served)}")  # fmt: skip
        assert set(served) == {pods["node-2"]}
    finally:
        subprocess.run(["ip", "-n", lan_ns, "link", "set", port, "up"], check=True)
    deadline = time.monotonic() + 10
    while {get(lab, "node-2", address, 80)[0] for _ in range(12)} != set(pods.values()):
        assert time.monotonic() < deadline, "node-1's pod never came back"
