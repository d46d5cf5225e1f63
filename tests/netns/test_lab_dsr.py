"""Direct server return in the lab: a client on the LAN reaches a pod on node-2 through
node-1's NodePort. By DSR the pod sees the client's own address under externalTrafficPolicy
Cluster, and its answers reach the client from node-2's port on the LAN (node-1 never sees
them); by SNAT (the default, and UDP in hybrid mode) the pod sees node-1. IPv4 and IPv6.
node-3 runs no xlb at all: its pod is reached by SNAT even through a DSR Service, because
no xlb there would take the carrier off or answer from the frontend."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import pytest

from controlplane.datapath.maps import BE_F_DSR, Maps
from controlplane.lab.topology import CLIENT4, CLIENT6
from tests.helpers import wait_until
from tests.netns.neighbours import link_mac
from tests.netns.test_lab import run, running_lab

POD_RE = re.compile(r"pod=(\S+) node=(\S+) client=(\S+)")


def service(name: str, mode: str | None, ports: str, app: str = "web") -> str:
    annotations = f"annotations: {{xlb.io/forwarding-mode: {mode}}}" if mode else ""
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          {annotations}
        spec:
          type: NodePort
          ipFamilyPolicy: PreferDualStack
          selector: {{app: {app}}}
          ports: {ports}
        ---
    """)


def deployment(app: str, node: str, ports: str) -> str:
    """One pod of app on node, its container's ports as given."""
    return textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {app}}}
        spec:
          selector: {{matchLabels: {{app: {app}}}}}
          replicas: 1
          template:
            metadata: {{labels: {{app: {app}}}}}
            spec:
              nodeName: {node}
              containers: [{{name: {app}, ports: {ports}}}]
        ---
    """)


MANIFEST = "".join(
    (
        deployment("web", "node-2", "[{containerPort: 80}, {containerPort: 53, protocol: UDP}]"),
        service("dsr", "dsr", "[{name: http, port: 80, targetPort: 80, nodePort: 30600}]"),
        service("hybrid", "hybrid", "[{name: http, port: 80, targetPort: 80, nodePort: 30601}, "
                "{name: dns, port: 53, targetPort: 53, protocol: UDP, nodePort: 30653}]"),
        service("snat", None, "[{name: http, port: 80, targetPort: 80, nodePort: 30602}]"),
        deployment("plain", "node-3", "[{containerPort: 80}]"),
        service("on-a-node-without-xlb", "dsr",
                "[{name: http, port: 80, targetPort: 80, nodePort: 30603}]", app="plain"),
    )
)  # fmt: skip


def dsr_known(lab) -> bool:
    """node-1's kernel has node-2's pod as a backend DSR may reach (the gossip told node-1
    that node-2 runs xlb)."""
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")
    maps = Maps.open(node1.pin_root)
    try:
        return any(b.flags & BE_F_DSR for b in maps.read_backends().values())
    finally:
        maps.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab-dsr")
    (d / "web.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=3, without_xlb=["node-3"]) as lab:
        wait_until(lambda: dsr_known(lab), timeout=30, every=0.2, what="node-2 known to run xlb")
        yield lab


def node_address(lab, name: str, family: int) -> str:
    node = next(n for n in lab.load().nodes if n.name == name)
    return next(a for a in node.addresses if (":" in a) == (family == 6))


def curl(lab, host: str, port: int) -> tuple[str, str, str]:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    out = run(lab, "client", "curl", "-sS", "-m", "3", url)
    assert out.returncode == 0, out.stderr
    found = POD_RE.search(out.stdout)
    assert found, out.stdout
    return found.groups()


def address_of(client: str) -> str:
    """The address of a pod server's `client=` (IPv6 in brackets, then the port)."""
    return client.rsplit(":", 1)[0].strip("[]")


def backend_flags(lab, node_name: str, pod_node: str) -> set[int]:
    """The flags node_name's kernel holds for the backends on pod_node's pods."""
    ips = {ip for p in lab.load().pods if p.node == pod_node for ip in p.ips}
    node = next(n for n in lab.load().nodes if n.name == node_name)
    maps = Maps.open(node.pin_root)
    try:
        return {b.flags for b in maps.read_backends().values() if b.address in ips}
    finally:
        maps.close()


@pytest.mark.parametrize("family", [4, 6])
def test_by_dsr_the_pod_sees_the_client_and_by_snat_node_1(lab, family):
    node1 = node_address(lab, "node-1", family)
    client = CLIENT4 if family == 4 else CLIENT6
    pod, node, seen = curl(lab, node1, 30600)
    assert node == "node-2" and address_of(seen) == client, (pod, node, seen)
    pod, node, seen = curl(lab, node1, 30602)  # the same pod, by SNAT
    assert node == "node-2" and address_of(seen) == node1, (pod, node, seen)


UDP_ASK = textwrap.dedent("""
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"who", (host, port))
    print(s.recv(200).decode())
""")


def test_hybrid_sends_tcp_by_dsr_and_udp_by_snat(lab):
    node1 = node_address(lab, "node-1", 4)
    _, _, seen = curl(lab, node1, 30601)
    assert address_of(seen) == CLIENT4
    out = run(lab, "client", sys.executable, "-c", UDP_ASK, node1, "30653")
    found = POD_RE.search(out.stdout)
    assert found, (out.stdout, out.stderr)
    assert found.group(2) == "node-2" and address_of(found.group(3)) == node1


def test_the_answers_come_from_node_2_on_the_lan(lab):
    """What the client's port on the LAN sees: the SYN-ACK from node-1's address and NodePort
    comes from node-2's MAC (node-1 sent only the client's packets on), and node-1's kernel
    counted carriers while node-2's took them off."""
    node1 = node_address(lab, "node-1", 4)
    nodes = {n.name: n for n in lab.load().nodes}
    client_ns = lab.client_ns
    capture = subprocess.Popen(
        ["ip", "netns", "exec", client_ns, "tcpdump", "-l", "-e", "-n", "-c", "1", "-i", "eth0",
         f"src host {node1} and src port 30600 and tcp[tcpflags] & tcp-syn != 0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # tcpdump listening
        curl(lab, node1, 30600)
        line, _ = capture.communicate(timeout=10)
    finally:
        capture.kill()
    assert link_mac(nodes["node-2"].netns).lower() in line.lower(), line
    assert link_mac(nodes["node-1"].netns).lower() not in line.split(">")[0].lower(), line
    counts = {}
    for name in ("node-1", "node-2"):
        maps = Maps.open(nodes[name].pin_root)
        counts[name] = maps.reason_counts()
        maps.close()
    assert counts["node-1"]["dsr_carried"] > 0 and counts["node-2"]["dsr_delivered"] > 0
    print({n: {k: v for k, v in c.items() if k.startswith("dsr")} for n, c in counts.items()})


@pytest.mark.parametrize("family", [4, 6])
def test_a_pod_on_a_node_without_xlb_is_reached_by_snat(lab, family):
    """The gossip never heard of node-3, so node-1 holds its pod without the DSR flag: the
    DSR Service reaches it by SNAT (the pod sees node-1), and the connection works."""
    flags = backend_flags(lab, "node-1", "node-3")
    assert flags and not any(f & BE_F_DSR for f in flags), flags
    assert any(f & BE_F_DSR for f in backend_flags(lab, "node-1", "node-2"))
    node1 = node_address(lab, "node-1", family)
    pod, node, seen = curl(lab, node1, 30603)
    assert node == "node-3" and address_of(seen) == node1, (pod, node, seen)
    _, node, seen = curl(lab, node1, 30600)  # the same node-1, to node-2's pod: DSR
    assert node == "node-2" and address_of(seen) != node1
