"""L2 failover that keeps connections: 24 long-lived TCP connections from the LAN's client
through a LoadBalancer IP sent by DSR to pods on node-3 and node-4; the cable of the node
that answers for the IP is pulled. The other node allowed to announce it takes it over; the
connections' next packets reach it without a conntrack entry there, and Maglev, the same
table on every node, sends each to the backend it already had, whose node still holds the
flow. Every connection must go on (no reset, its answer within the failover time and a
few retransmissions) with the pod it had. Each sends a line the moment the cable is
pulled, so its segment meets the outage and is retransmitted until the new owner has the
address; a SNAT flow in its place times out (the new owner has no port for it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import wait_until
from tests.netns.neighbours import ask, macs_of
from tests.netns.test_lab import lan_port, running_lab

CONNECTIONS = 24


def pinned(name: str, node: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          selector: {{matchLabels: {{app: web, at: {node}}}}}
          replicas: 1
          template:
            metadata: {{labels: {{app: web, at: {node}}}}}
            spec:
              nodeName: {node}
              containers: [{{name: web, ports: [{{containerPort: 80}}]}}]
        ---
    """)


MANIFEST = (
    pinned("web-3", "node-3")
    + pinned("web-4", "node-4")
    + textwrap.dedent("""
        apiVersion: v1
        kind: Service
        metadata:
          name: kept
          annotations: {xlb.io/forwarding-mode: dsr}
        spec:
          type: LoadBalancer
          selector: {app: web}
          ports: [{name: echo, port: 8000, targetPort: 80}]
        ---
        apiVersion: metallb.io/v1beta1
        kind: L2Advertisement
        metadata: {name: front, namespace: metallb-system}
        spec:
          nodeSelectors: [{matchLabels: {front: "yes"}}]
        ---
        apiVersion: v1
        kind: Node
        metadata: {name: node-1, labels: {front: "yes"}}
        ---
        apiVersion: v1
        kind: Node
        metadata: {name: node-2, labels: {front: "yes"}}
    """)
)

HOLD = textwrap.dedent("""
    import json, socket, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conns, first = [], []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        f = s.makefile("rwb", buffering=0)
        f.write(b"ping\\n")
        first.append(f.readline().decode().split()[0])
        conns.append((s, f))
    print(json.dumps({"pods": first}), flush=True)
    sys.stdin.readline()  # the cable was just pulled: these segments meet the outage
    t = time.monotonic()
    for s, f in conns:
        f.write(b"ping\\n")
    out = {"pods": [], "errors": [], "seconds": []}
    for s, f in conns:
        try:
            s.settimeout(max(0.1, t + 30 - time.monotonic()))
            line = f.readline().decode()
            out["pods"].append(line.split()[0] if line else "")
            if not line:
                out["errors"].append("closed")
        except OSError as e:
            out["pods"].append("")
            out["errors"].append(type(e).__name__ + ": " + str(e))
        out["seconds"].append(round(time.monotonic() - t, 2))
    print(json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab-dsr-failover")
    (d / "web.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=4) as lab:
        yield lab


def lb_ip(lab) -> str:
    from controlplane.sources.manifests import load_cluster

    def find():
        cluster = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
        svc = next(s for s in cluster.services if s.name == "kept")
        return next((ip for ip in svc.ingress_ips if ":" not in ip), None)

    wait_until(lambda: find() is not None, timeout=20, every=0.2, what="an LB IP for kept")
    return find()


def owner(lab, ip: str) -> set[str]:
    heard = ask(lab.client_ns, [ip], count=2, interval=0.1).rounds(macs_of(lab))
    return heard.get((1, ip), set()) | heard.get((2, ip), set())


def test_connections_through_an_lb_ip_survive_its_owner_losing_its_cable(lab):
    ip = lb_ip(lab)
    wait_until(lambda: len(owner(lab, ip)) == 1, timeout=20, every=0.2, what="one owner")
    (before,) = owner(lab, ip)
    assert before in ("node-1", "node-2")
    holder = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.client_ns}", sys.executable, "-c", HOLD, ip, "8000",
         str(CONNECTIONS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lan_ns = port = None
    try:
        first = json.loads(holder.stdout.readline())["pods"]
        assert len(first) == CONNECTIONS and all(p.startswith("pod=web-") for p in first)
        assert len(set(first)) == 2, first  # both backends hold some
        node = next(n for n in lab.load().nodes if n.name == before)
        lan_ns, port = lan_port(lab, node.netns)
        pulled = time.monotonic()
        subprocess.run(["ip", "-n", lan_ns, "link", "set", port, "down"], check=True)
        holder.stdin.write("go\n")  # data in flight into the outage: retransmitted
        holder.stdin.flush()
        other = {"node-1": "node-2", "node-2": "node-1"}[before]
        took = wait_until(lambda: owner(lab, ip) == {other}, timeout=15, every=0.1,
                          since=pulled, what=f"{other} answering for {ip}")  # fmt: skip
        after = json.loads(holder.stdout.readline())
    finally:
        holder.kill()
        if lan_ns:
            subprocess.run(["ip", "-n", lan_ns, "link", "set", port, "up"], check=True)
    print(f"{other} seen answering for {ip} (ARP probes) {took:.2f} s after {before}'s "
          f"cable was pulled; {CONNECTIONS - len(after['errors'])} of {CONNECTIONS} "
          f"connections answered again, the slowest {max(after['seconds'])} s after")  # fmt: skip
    assert after["errors"] == [], after
    assert after["pods"] == first  # each on the backend it had
