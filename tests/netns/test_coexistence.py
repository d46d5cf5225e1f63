"""xlb beside other programs on a node, as a CNI or a monitoring tool holds them: the test's
own small programs (they count what they see) on the same hooks as xlb's, kept working
through xlb's attach, restart and detach. XDP has one program per device: there xlb refuses,
naming the other program, and leaves it."""

from __future__ import annotations

import contextlib
import json
import os
import socket

import bcc
import pytest

from controlplane.datapath import syscall as sc
from tests.kernel import inside
from tests.netns.nodes import (
    CLIENT_IP,
    CLIENT_IP2,
    NODE_IP,
    NODE_IP2,
    POD_IP,
    Lan,
    NodeTopology,
    node_topology,
    web_cluster,
)

MANIFEST = web_cluster()

THEIRS = b"""
#include <linux/pkt_cls.h>
BPF_ARRAY(seen, u64, 4);
static __always_inline void count(u32 k) {
    u64 *v = seen.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
}
int their_xdp(struct xdp_md *ctx) { count(0); return XDP_PASS; }
int their_filter(struct __sk_buff *skb) { count(1); return TC_ACT_UNSPEC; }
int their_tcx(struct __sk_buff *skb) { count(2); return TC_ACT_UNSPEC; }
int their_connect4(struct bpf_sock_addr *ctx) { count(3); return 1; }
"""
XDP, FILTER, TCX, CONNECT = range(4)


class Theirs:
    """The other tool's programs and where they are attached."""

    def __init__(self) -> None:
        self.bpf = bcc.BPF(text=THEIRS)
        self.xdp = self.bpf.load_func(b"their_xdp", bcc.BPF.XDP)
        self.filter = self.bpf.load_func(b"their_filter", bcc.BPF.SCHED_CLS)
        self.tcx = self.bpf.load_func(b"their_tcx", bcc.BPF.SCHED_CLS)
        self.connect = self.bpf.load_func(
            b"their_connect4",
            bcc.BPF.CGROUP_SOCK_ADDR,
            attach_type=bcc.BPFAttachType.CGROUP_INET4_CONNECT,
        )
        self.links: list[int] = []

    def counts(self) -> list[int]:
        return [self.bpf["seen"][i].value for i in range(4)]

    def attach(self, topo: NodeTopology) -> None:
        from pyroute2 import IPRoute

        with inside(topo.node):
            bcc.BPF.attach_xdp(b"up1", self.xdp, 1 << 2)  # another device: xlb's is up0
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname="up0")[0]
                ipr.tc("add", "clsact", idx)
                # where an xlb before links put its own filter (prio 1, handle 1)
                ipr.tc("add-filter", "bpf", idx, ":1", fd=self.filter.fd, name="their_filter",
                       parent="ffff:fff3", classid=1, direct_action=True, prio=1)  # fmt: skip
            self.links.append(sc.link_create(self.tcx.fd, socket.if_nametoindex("up0"),
                                             sc.BPF_TCX_EGRESS))  # fmt: skip
        fd = os.open(topo.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            bcc.BPF.attach_func(self.connect, fd, bcc.BPFAttachType.CGROUP_INET4_CONNECT,
                                sc.BPF_F_ALLOW_MULTI)  # fmt: skip
        finally:
            os.close(fd)

    def detach(self, topo: NodeTopology) -> None:
        for fd in self.links:
            os.close(fd)
        fd = os.open(topo.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(Exception):
                bcc.BPF.detach_func(self.connect, fd, bcc.BPFAttachType.CGROUP_INET4_CONNECT)
        finally:
            os.close(fd)
        self.bpf.cleanup()


@pytest.fixture
def node(tmp_path):
    lans = [Lan(NODE_IP, CLIENT_IP), Lan(NODE_IP2, CLIENT_IP2)]
    with node_topology(tmp_path, lans, {"web-1": POD_IP}) as topo:
        theirs = Theirs()
        try:
            theirs.attach(topo)
            yield topo, theirs
        finally:
            topo.down()
            theirs.detach(topo)


def _up(topo: NodeTopology):
    manifest = topo.tmp / "cluster.yaml"
    manifest.write_text(MANIFEST)
    where = ["--uplink", "up0", "--cgroup", topo.cgroup, "--pin-root", topo.pin_root]
    return topo.xlb("datapath", "up", "-f", str(manifest), "--node", "node-1", *where)


def _links(topo: NodeTopology) -> dict[str, tuple[int, int]]:
    out = topo.xlb("status", "--json", "--pin-root", topo.pin_root)
    assert out.returncode == 0, out.stderr
    return {a["link"]: (a["linkId"], a["programId"]) for a in json.loads(out.stdout)["attachments"]}


def _xdp_prog(topo: NodeTopology, dev: str) -> int:
    shown = json.loads(topo.run_in(topo.node, "ip", "-j", "-d", "link", "show", dev).stdout)[0]
    return shown.get("xdp", {}).get("prog", {}).get("id", 0)


def _all_work(topo: NodeTopology, theirs: Theirs, xlb: bool) -> None:
    """Traffic that each of their programs sees rises their counter; xlb's paths serve."""
    before = theirs.counts()
    nodeport = topo.curl(topo.client, f"http://{NODE_IP}:30080/")
    cluster_ip = topo.curl(topo.node, "http://10.96.0.50/", cgroup=True)
    if xlb:
        assert nodeport.returncode == 0 and nodeport.stdout.startswith("web-1 "), nodeport.stderr
        assert cluster_ip.returncode == 0 and cluster_ip.stdout.startswith("web-1 ")
    ping = topo.run_in(topo.clients[1], "ping", "-c", "2", "-W", "1", NODE_IP2)
    assert ping.returncode == 0, ping.stdout
    topo.run_in(topo.client, "ping", "-c", "2", "-W", "1", NODE_IP)  # egress on up0
    after = theirs.counts()
    grew = [after[i] > before[i] for i in range(4)]
    assert grew == [True, True, True, True], (before, after)


def test_other_programs_keep_working_through_attach_restart_and_detach(node):
    topo, theirs = node
    their_xdp = _xdp_prog(topo, "up1")
    _all_work(topo, theirs, xlb=False)

    out = _up(topo)
    assert out.returncode == 0, out.stderr
    first = _links(topo)
    assert {"xdp-", "tcx-"} <= {name[:4] for name in first}, first
    _all_work(topo, theirs, xlb=True)

    out = _up(topo)  # a restart: new programs, the same links
    assert out.returncode == 0, out.stderr
    again = _links(topo)
    assert {k: v[0] for k, v in again.items()} == {k: v[0] for k, v in first.items()}
    assert all(again[k][1] != first[k][1] for k in first), (first, again)
    _all_work(topo, theirs, xlb=True)
    assert _xdp_prog(topo, "up1") == their_xdp

    topo.down()
    assert _xdp_prog(topo, "up0") == 0  # xlb's are gone ...
    assert not os.path.exists(topo.pin_root)
    _all_work(topo, theirs, xlb=False)  # ... theirs run on
    assert _xdp_prog(topo, "up1") == their_xdp


def test_xlb_does_not_replace_another_xdp_program(node):
    topo, theirs = node
    with inside(topo.node):
        bcc.BPF.attach_xdp(b"up0", theirs.xdp, 1 << 2)
    theirs_id = _xdp_prog(topo, "up0")
    out = _up(topo)
    assert out.returncode != 0
    assert "up0 already runs another XDP program (their_xdp" in out.stderr, out.stderr
    assert "does not replace it" in out.stderr
    assert _xdp_prog(topo, "up0") == theirs_id
