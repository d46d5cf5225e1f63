"""Every flag of `xlb datapath up`, end to end, as tests/netns/test_agent_flags.py does for
the agent: the real command on a node with two LANs, each row checking what the flag changes
where a user would look (traffic, `xlb status`, the kernel's attachments and maps)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.cli import build_parser
from tests.netns.nodes import (
    CLIENT_IP,
    NODE_IP,
    POD_IP,
    Lan,
    NodeTopology,
    manifest,
    node_doc,
    node_topology,
    pod_doc,
    service_doc,
    web_cluster,
)
from tests.netns.nodes import CLIENT_IP2 as CLIENT_B
from tests.netns.nodes import NODE_IP2 as NODE_B

CLUSTER = web_cluster(node_doc("node-2", "192.168.198.202"))
# no Node objects: --nodes says how many to synthesise (192.168.198.201, .202, ...)
NODELESS = manifest(service_doc("web", "10.96.0.50"), pod_doc("web-1", POD_IP))


@dataclass(frozen=True)
class Row:
    flag: str
    args: tuple[str, ...]
    check: Callable[[NodeTopology, subprocess.CompletedProcess], None]
    cluster: str = CLUSTER
    fails: bool = False  # the command must fail (and say why)


def _status(topo: NodeTopology) -> dict:
    out = topo.xlb("status", "--json", "--pin-root", topo.pin_root)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _external(topo: NodeTopology) -> set[str]:
    return {f["address"] for f in _status(topo)["frontends"] if f["scope"] == "external"}


def _serves(topo: NodeTopology, _out) -> None:
    got = topo.curl(topo.client, f"http://{NODE_IP}:30080/")
    assert got.returncode == 0 and got.stdout.startswith("web-1 "), got.stderr


def _node(topo: NodeTopology, _out) -> None:
    """node-2's own address is a NodePort and the SNAT source (up0's addresses are
    NodePorts too: it is a served device)."""
    assert "192.168.198.202" in _external(topo)
    assert _status(topo)["nodeAddresses"][0] == "192.168.198.202"


def _nodes(topo: NodeTopology, _out) -> None:
    assert "192.168.198.203" in _external(topo)  # the third synthesised node
    assert _status(topo)["nodeAddresses"][0] == "192.168.198.203"


def _too_few_nodes(_topo: NodeTopology, out) -> None:
    assert "no node 'node-3'; nodes: node-1, node-2" in out.stderr, out.stderr


def _node_ip(topo: NodeTopology, _out) -> None:
    assert _status(topo)["nodeAddresses"][0] == "192.168.198.99"


def _xdp(topo: NodeTopology) -> dict[str, str]:
    return {a["device"]: a["mode"] for a in _status(topo)["attachments"] if a["kind"] == "xdp"}


def _uplink(topo: NodeTopology, out) -> None:
    assert _xdp(topo) == {"up0": "native"}
    _serves(topo, out)


def _devices(topo: NodeTopology, _out) -> None:
    assert _xdp(topo) == {"up0": "native", "up1": "native"}
    got = topo.curl(topo.clients[1], f"http://{NODE_B}:30080/")  # up1's address: a NodePort
    assert got.returncode == 0 and got.stdout == f"web-1 {CLIENT_B}\n", got.stderr


def _generic(topo: NodeTopology, out) -> None:
    assert _xdp(topo) == {"up0": "generic"}
    _serves(topo, out)


def _cgroup(topo: NodeTopology, _out) -> None:
    shown = subprocess.run(["bpftool", "cgroup", "show", topo.cgroup], capture_output=True,
                           text=True).stdout  # fmt: skip
    assert "connect4" in shown and "sendmsg6" in shown, shown
    got = topo.curl(topo.node, "http://10.96.0.50/", cgroup=True)
    assert got.returncode == 0 and got.stdout.startswith("web-1 "), got.stderr


def _ebpf(topo: NodeTopology, out) -> None:
    assert "// cflags:" in out.stdout and "int xdp_lb(struct xdp_md *ctx)" in out.stdout
    assert "int tc_lb(" in out.stdout and "sock_connect4" in out.stdout
    assert not Path(topo.pin_root).exists()  # printed, nothing loaded
    assert _xdp_links_on(topo) == ""


def _xdp_links_on(topo: NodeTopology) -> str:
    shown = topo.run_in(topo.node, "ip", "-d", "link", "show", "up0").stdout
    return "xdp" if "prog/xdp" in shown else ""


def _pin_root(topo: NodeTopology, _out) -> None:
    for name in ("services", "ct", "links", "layout"):
        assert Path(topo.pin_root, name).exists(), name


def _size(name: str, entries: int) -> Callable[[NodeTopology, subprocess.CompletedProcess], None]:
    def check(topo: NodeTopology, _out) -> None:
        shown = subprocess.run(
            ["bpftool", "-j", "map", "show", "pinned", f"{topo.pin_root}/{name}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert json.loads(shown)["max_entries"] == entries

    return check


def _status(topo: NodeTopology) -> dict:
    out = topo.xlb("status", "--json", "--pin-root", topo.pin_root)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _local_delivery(topo: NodeTopology, out) -> None:
    """Into the pod by tc_lb_in, its answers out by tc_lb_pod, past the node's stack."""
    status = _status(topo)
    assert status["localDelivery"] == "redirect"
    before = status["reasons"]["local_redirected"], status["reasons"]["local_reply_redirected"]
    got = topo.curl(topo.client, f"http://{NODE_IP}:30080/")
    assert got.returncode == 0 and got.stdout == f"web-1 {CLIENT_IP}\n", got.stderr
    status = _status(topo)
    after = status["reasons"]
    assert after["local_redirected"] > before[0] and after["local_reply_redirected"] > before[1]
    pods = {a["device"] for a in status["attachments"] if a["link"].startswith("tcx-pod-")}
    # the pod's veth, never the uplink xlb serves (up1 is a veth to another namespace too:
    # to xlb, a pod's for all it can tell; tc_lb_pod there would pass all it sees)
    assert "vpod0" in pods and "up0" not in pods, status["attachments"]


def _max_rings(topo: NodeTopology, out) -> None:
    """Accepted (scripts from before keep working), said to do nothing."""
    assert "--max-rings no longer has any effect" in out.stderr
    _serves(topo, out)


def _ring_size(topo: NodeTopology, out) -> None:
    status = _status(topo)
    assert status["maglev"]["largestSize"] == 1021
    assert all(f["maglevTable"] for f in status["frontends"] if f["algorithm"] == "maglev")
    assert "Maglev tables" in out.stdout, out.stdout


ROWS = [
    Row("--filename", (), _serves),
    Row("--node", ("--node", "node-2"), _node),
    Row("--nodes", ("--nodes", "3", "--node", "node-3"), _nodes, cluster=NODELESS),
    Row("--nodes (too few)", ("--node", "node-3"), _too_few_nodes, cluster=NODELESS, fails=True),
    Row("--node-ip", ("--node-ip", "192.168.198.99"), _node_ip),
    Row("--uplink", (), _uplink),
    Row("--devices", ("--devices", "up1"), _devices),
    Row("--generic-xdp", ("--generic-xdp",), _generic),
    Row("--cgroup", (), _cgroup),
    Row("--ebpf", ("--ebpf",), _ebpf),
    Row("--pin-root", (), _pin_root),
    Row("--max-rings", ("--max-rings", "2"), _max_rings),
    Row("--ring-size", ("--ring-size", "1021"), _ring_size),
    Row("--local-delivery", ("--local-delivery", "redirect"), _local_delivery),
    Row("--ct-size", ("--ct-size", "2048"), _size("ct", 2048)),
]


def test_every_datapath_up_flag_has_a_row():
    parser = build_parser()._subparsers._group_actions[0].choices["datapath"]
    up = parser._subparsers._group_actions[0].choices["up"]
    flags = {a.option_strings[-1] for a in up._actions if a.option_strings} - {"--help"}
    covered = {w for r in ROWS for w in r.flag.split() if w.startswith("--")}
    assert flags - covered == set(), f"flags without an end-to-end row: {flags - covered}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up-flags")
    with node_topology(
        tmp, [Lan(NODE_IP, CLIENT_IP), Lan(NODE_B, CLIENT_B)], {"web-1": POD_IP}
    ) as t:
        yield t


@pytest.mark.parametrize("row", ROWS, ids=[r.flag for r in ROWS])
def test_datapath_up_flag(node: NodeTopology, row: Row, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(row.cluster)
    base = ["-f", str(path), "--uplink", "up0", "--cgroup", node.cgroup, "--pin-root",
            node.pin_root]  # fmt: skip
    if "--node" not in row.args:
        base += ["--node", "node-1"]
    try:
        out = node.xlb("datapath", "up", *base, *row.args)
        assert (out.returncode != 0) == row.fails, out.stderr
        row.check(node, out)
    finally:
        node.down()


def test_local_delivery_back_to_stack_unhooks_the_pod_veths(node: NodeTopology, tmp_path):
    """The pod veths' links are xlb's only while it redirects: a datapath brought up again
    with `stack` removes them (the programs would pass every packet anyway), and the pod is
    still served, through the stack."""
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    base = ["-f", str(path), "--uplink", "up0", "--cgroup", node.cgroup, "--pin-root",
            node.pin_root, "--node", "node-1"]  # fmt: skip

    def pod_links() -> set[str]:
        links = _status(node)["attachments"]
        return {a["device"] for a in links if a["link"].startswith("tcx-pod-")}

    try:
        for mode in ("redirect", "stack", "redirect"):
            out = node.xlb("datapath", "up", *base, "--local-delivery", mode)
            assert out.returncode == 0, out.stderr
            assert ("vpod0" in pod_links()) == (mode == "redirect"), (mode, pod_links())
            assert mode == "redirect" or not pod_links()
            _serves(node, out)
    finally:
        node.down()
