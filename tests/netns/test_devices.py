"""A node with two interfaces, a LAN uplink (up0) and a second network (up1), each with a
client: NodePort and LoadBalancer traffic arriving on either is balanced when xlb serves
both (--devices), and a frontend on an interface it does not serve is reported."""

from __future__ import annotations

import json

import pytest

from tests.helpers import eventually
from tests.netns.nodes import (
    CLIENT_IP,
    CLIENT_IP2,
    NODE_IP,
    NODE_IP2,
    POD_IP,
    AgentProcess,
    Lan,
    NodeTopology,
    manifest,
    node_doc,
    node_topology,
    pod_doc,
    service_doc,
)

NODE_A, CLIENT_A, NODE_B, CLIENT_B = NODE_IP, CLIENT_IP, NODE_IP2, CLIENT_IP2
POOL, LB_IP = "lab=192.168.198.240/29", "192.168.198.240"
KEY = "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"


def cluster(*addresses: str) -> str:
    web = service_doc("web", "10.96.0.50", type_="LoadBalancer")
    return manifest(node_doc("node-1", *addresses), web, pod_doc("web-1", POD_IP))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    with node_topology(tmp, [Lan(NODE_A, CLIENT_A), Lan(NODE_B, CLIENT_B)], {"web-1": POD_IP}) as t:
        # client B reaches LAN A's LoadBalancer addresses through the node, over up1; the
        # node's default route is on the second network (as a NAT interface often is)
        t.run_in(t.clients[1], "ip", "route", "add", POOL.split("=")[1], "via", NODE_B)
        t.run_in(t.node, "ip", "route", "add", "default", "via", CLIENT_B)
        yield t


def _agent(topo: NodeTopology, tmp_path, text: str, *args: str) -> AgentProcess:
    (tmp_path / "cluster.yaml").write_text(text)
    (tmp_path / "key").write_text(KEY)
    base = ["-f", str(tmp_path / "cluster.yaml"), "--node", "node-1", "--cgroup", topo.cgroup,
            "--pin-root", topo.pin_root, "--pool", POOL,
            "--gossip-key-file", str(tmp_path / "key")]  # fmt: skip
    agent = AgentProcess(topo, [*base, *args])
    agent.wait_ready()
    return agent


def _answer(topo: NodeTopology, client: int, address: str, port: int = 80) -> str:
    out = topo.curl(topo.clients[client], f"http://{address}:{port}/")
    assert out.returncode == 0, f"client {client} -> {address}:{port}: {out.stderr}"
    return out.stdout.strip()


def _status(topo: NodeTopology) -> dict:
    return json.loads(topo.xlb("status", "--json", "--pin-root", topo.pin_root).stdout)


def _both_interfaces_balanced(topo: NodeTopology) -> None:
    # the pod sees each client's own address: XDP on the interface the client is on
    # balanced it (the stack would have no listener for the NodePort)
    assert _answer(topo, 0, NODE_A, 30080) == f"web-1 {CLIENT_A}"
    assert _answer(topo, 1, NODE_B, 30080) == f"web-1 {CLIENT_B}"
    assert eventually(lambda: LB_IP in _status(topo)["announcing"]["addresses"], 10)
    assert _answer(topo, 0, LB_IP) == f"web-1 {CLIENT_A}"
    assert _answer(topo, 1, LB_IP) == f"web-1 {CLIENT_B}"
    links = {a["device"]: a["mode"] for a in _status(topo)["attachments"] if a["kind"] == "xdp"}
    assert links == {"up0": "native", "up1": "native"}, links


def test_both_interfaces_named(node, tmp_path):
    try:
        with _agent(node, tmp_path, cluster(NODE_A), "--uplink", "up0", "--devices", "up0,up1"):
            _both_interfaces_balanced(node)
    finally:
        node.down()


def test_both_interfaces_found_by_auto(node, tmp_path):
    """auto: up0 holds the node's address, up1 the default route; the pods' veths neither."""
    try:
        with _agent(node, tmp_path, cluster(NODE_A), "--node-ip", NODE_A, "--devices", "auto"):
            _both_interfaces_balanced(node)
            served = {a["device"] for a in _status(node)["attachments"] if a["kind"] == "xdp"}
            assert served == {"up0", "up1"}
    finally:
        node.down()


def test_a_frontend_on_an_unserved_interface_is_reported(node, tmp_path):
    """The Node lists the second network's address, but xlb serves up0 only: its NodePort
    there is reported (traffic arriving on up1 is not balanced), never silently dropped."""
    try:
        with _agent(node, tmp_path, cluster(NODE_A, NODE_B), "--uplink", "up0") as agent:
            assert eventually(lambda: "is on up1, which xlb does not serve" in agent.text(), 10)
            line = next(x for x in agent.text().splitlines() if "does not serve" in x)
            assert f"TCP {NODE_B}:30080" in line and "default/web" in line, line
            assert _answer(node, 0, NODE_A, 30080) == f"web-1 {CLIENT_A}"  # up0 still serves
    finally:
        node.down()
