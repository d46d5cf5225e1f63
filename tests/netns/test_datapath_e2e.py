"""The datapath end to end with real traffic: a node, an outside client and pods in network
namespaces; `xlb datapath up` (the real CLI) programs the node; curl and live TCP flows go
through XDP + tc (NodePort) and through the socket hooks (ClusterIP)."""

from __future__ import annotations

import copy
import dataclasses
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.netns.nodes import Lan, NodeTopology, node_topology

NODE_IP, CLIENT_IP = "192.168.198.201", "192.168.198.100"
PODS = {"web-1": "10.244.1.5", "web-2": "10.244.1.6"}


def manifests(pods: list[str]) -> str:
    docs = [
        f"""
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
status: {{addresses: [{{type: InternalIP, address: {NODE_IP}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http, nodePort: 30080}}
  - {{name: echo, port: 9000, targetPort: 9000, nodePort: 30090}}
"""
    ]
    for name in pods:
        docs.append(f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: node-1
  containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]
status: {{podIP: {PODS[name]}}}
""")
    return "---".join(docs)


def echo_flow(topo) -> subprocess.Popen:
    """A TCP flow from the client to a NodePort, echoing for 10 s, once it is connected."""
    flow = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{topo.client}", sys.executable, "-c", ECHO_CLIENT]
        + [NODE_IP, "30090", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert flow.stdout.readline().strip() == "connected"
    return flow


def test_established_flows_survive_an_upgrade_that_changed_a_map_layout(topo):
    """A new xlb whose maps.h laid conntrack out otherwise (here: the pins say an older xlb
    had no `seen` field, as before the state machine) carries the entries into a map of its
    own layout, and the flow goes on: on its very entry. (The entry is marked first: its
    frontend id, which packets only read, is set to one no frontend has; an entry made
    again would carry the real one. Its stamp moves on every second the flow runs.)"""
    from controlplane.datapath.maps import Maps, get_addr
    from controlplane.datapath.pinned import read_layout, write_layout

    MARK = 1023

    def entries(mark: bool = False) -> dict[bytes, int]:
        maps = Maps.open(topo.pin_root)
        try:
            out = {}
            for k, v in maps.ct.items():
                if get_addr(k.daddr) == NODE_IP and k.dport == socket.htons(30090):
                    if mark:
                        v.svc = MARK
                        maps.ct[k] = v
                    out[bytes(k)] = v.svc
            return out
        finally:
            maps.close()

    flow = echo_flow(topo)
    before = entries(mark=True)
    assert before and set(before.values()) == {MARK}
    layout = read_layout(topo.pin_root)
    tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in layout.items()}
    older = copy.deepcopy(layout["xlb_ct"]["leaf"])
    for member in older[1]:
        if member[0] == "seen":
            member[0] = "reserved"
    tables["xlb_ct"] = ("ct", layout["xlb_ct"]["key"], older)
    write_layout(topo.pin_root, tables)  # as an older xlb would have left it
    out = topo.up(["web-1"])
    assert "carried the maps ct over" in out.stderr
    after = entries()
    assert all(after.get(key) == MARK for key in before), (before, after)
    got, err = flow.communicate(timeout=30)
    assert flow.returncode == 0, err
    assert int(got.split()[-1]) > 100  # hundreds of round trips, none lost


class Topology(NodeTopology):
    """The shared one-node topology, with `xlb datapath up` from this module's manifests."""

    def up(self, pods: list[str]) -> subprocess.CompletedProcess:
        path = self.tmp / "cluster.yaml"
        path.write_text(manifests(pods))
        out = self.xlb("datapath", "up", "-f", str(path), "--node", "node-1", "--uplink", "up0",
                       "--cgroup", self.cgroup, "--pin-root", self.pin_root)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    with node_topology(tmp, [Lan(NODE_IP, CLIENT_IP)], PODS) as shared:
        t = Topology(**{f.name: getattr(shared, f.name) for f in dataclasses.fields(shared)})
        t.up(["web-1"])
        yield t


def curl(topo: NodeTopology, ns: str, url: str, cgroup: bool = False) -> str:
    out = topo.run_in(ns, "curl", "-sS", "--max-time", "3", url, cgroup=cgroup)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_node_port_from_outside_reaches_the_pod_with_the_client_address(topo):
    assert curl(topo, topo.client, f"http://{NODE_IP}:30080/") == f"web-1 {CLIENT_IP}"


def test_cluster_ip_from_the_node_via_socket_hooks(topo):
    assert curl(topo, topo.node, "http://10.96.0.50/", cgroup=True).startswith("web-1 ")


def test_node_port_from_the_node_itself_via_socket_hooks(topo):
    """The node's own processes reach external addresses through the socket hooks (scope
    internal), never through XDP, which only sees traffic arriving on the uplink."""
    assert curl(topo, topo.node, f"http://{NODE_IP}:30080/", cgroup=True).startswith("web-1 ")


def test_cluster_ip_from_a_pod(topo):
    assert curl(topo, topo.pods["web-2"], "http://10.96.0.50/", cgroup=True).startswith("web-1 ")


def test_status_shows_the_frontends_and_their_traffic(topo):
    curl(topo, topo.client, f"http://{NODE_IP}:30080/")
    out = topo.xlb("status", "--pin-root", topo.pin_root)
    assert out.returncode == 0, out.stderr
    line = next(
        ln for ln in out.stdout.splitlines() if f"{NODE_IP}:30080" in ln and "external" in ln
    )
    assert "10.244.1.5:8080" in line and int(line.split()[4]) > 0
    assert "conntrack:" in out.stdout


ECHO_CLIENT = textwrap.dedent("""
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print("connected", flush=True)
    n, end = 0, time.time() + float(sys.argv[3])
    while time.time() < end:
        msg = f"{n}\\n".encode()
        s.sendall(msg)
        got = b""
        while not got.endswith(b"\\n"):
            got += s.recv(100)
        assert got == msg, (got, msg)
        n += 1
        time.sleep(0.01)
    print("echoed", n, flush=True)
""")


def test_established_flows_survive_datapath_restart_and_an_endpoint_change(topo):
    """Re-running the datapath (a restarted agent: new programs attached over the old ones,
    maps read back) and adding an endpoint must not break a flow that is already running,
    from outside (XDP conntrack) or from the node (socket hooks)."""
    flows = [echo_flow(topo)]
    topo.up(["web-1"])  # restart with the same manifests
    topo.up(["web-1", "web-2"])  # and a new endpoint
    for f in flows:
        out, err = f.communicate(timeout=30)
        assert f.returncode == 0, err
        assert int(out.split()[-1]) > 100  # hundreds of round trips, none lost
    # new connections now spread over both pods
    seen = {curl(topo, topo.client, f"http://{NODE_IP}:30080/").split()[0] for _ in range(16)}
    assert seen == {"web-1", "web-2"}
    topo.up(["web-1"])
