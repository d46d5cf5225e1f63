"""tc_lb on uplink egress: a local backend's reply leaves as the frontend."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, checksums_valid, tcp, udp
from tests.bpf.test_xdp_lb import CLIENT4, CLIENT6, NODE4, NODE6, STATE

TC_NEXT = 0xFFFFFFFF  # TC_ACT_UNSPEC (-1) as the u32 retval: the next program sees it too


@pytest.fixture
def fds(xdp, tc, maps, syncer):
    syncer.sync(STATE, NODE4, NODE6)
    return xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd


@pytest.mark.parametrize(
    "request_pkt,l3,l4",
    [
        (tcp(CLIENT4, 50000, NODE4, 30080), IP, TCP),
        (udp(CLIENT4, 50001, NODE4, 30053), IP, UDP),
        (tcp(CLIENT6, 50002, NODE6, 30080), IPv6, TCP),
        (udp(CLIENT6, 50003, NODE6, 30053), IPv6, UDP),
    ],
)
def test_reply_of_local_backend_leaves_as_the_frontend(fds, request_pkt, l3, l4):
    xdp_fd, tc_fd = fds
    to_backend = Ether(prog_test_run(xdp_fd, bytes(request_pkt)).data)
    backend, bport = to_backend[l3].dst, to_backend[l4].dport
    reply = (
        Ether(src=NODE_MAC, dst=CLIENT_MAC)
        / l3(src=backend, dst=request_pkt[l3].src)
        / l4(sport=bport, dport=request_pkt[l4].sport)
        / b"response"
    )
    out = prog_test_run(tc_fd, bytes(reply))
    assert out.retval == TC_NEXT
    got = Ether(out.data)
    assert (got[l3].src, got[l4].sport) == (request_pkt[l3].dst, request_pkt[l4].dport)
    assert (got[l3].dst, got[l4].dport) == (request_pkt[l3].src, request_pkt[l4].sport)
    assert checksums_valid(out.data)


def test_other_egress_traffic_is_untouched(fds):
    _, tc_fd = fds
    for pkt in (
        tcp("10.244.1.5", 8080, "203.0.113.99", 1234),
        udp(NODE4, 53, CLIENT4, 9999),
        Ether() / IP() / b"x",
    ):
        out = prog_test_run(tc_fd, bytes(pkt))
        assert (out.retval, out.data) == (TC_NEXT, bytes(pkt))


def test_tc_lb_in_leaves_to_the_stack_what_it_may_not_redirect(xdp, tc, maps, dp_config):
    """tc_lb_in hands a packet to a pod only with --local-delivery redirect, only for a flow
    xdp_lb delivered here, and only when the FIB names a pod's veth (none here: no route to
    the pod in this namespace); every other packet goes on untouched."""
    import dataclasses

    import bcc

    from controlplane.datapath.sync import Syncer

    xdp_fd, in_fd = xdp.functions["xdp_lb"].fd, tc.function("tc_lb_in", bcc.BPF.SCHED_CLS).fd
    delivered = Ether(prog_test_run(xdp_fd, bytes(tcp(CLIENT4, 50100, NODE4, 30080))).data)
    stranger = bytes(tcp(CLIENT4, 50101, "10.244.1.5", 8080))
    for mode in ("stack", "redirect"):
        Syncer(maps, dataclasses.replace(dp_config, local_delivery=mode)).sync(STATE, NODE4, NODE6)
        assert maps.config[maps.config.Key(0)].local_redirect == (mode == "redirect")
        for pkt in (bytes(delivered), stranger):
            out = prog_test_run(in_fd, pkt)
            assert (out.retval, out.data) == (TC_NEXT, pkt), mode
    assert maps.reason_counts()["local_redirected"] == 0


def test_tc_lb_pod_leaves_to_the_stack_what_it_may_not_redirect(xdp, tc, maps, dp_config):
    """tc_lb_pod hands a pod's packet to the uplink only with --local-delivery redirect, only
    for a reply of a flow xdp_lb delivered here, and only when the FIB names a device xlb
    serves (none here: this namespace routes nowhere); the rest goes on untouched, uncounted.
    The redirect itself is shown end to end (tests/netns: test_agent_flags'
    --local-delivery row, the pod's answers counted as local_reply_redirected)."""
    import dataclasses

    import bcc

    from controlplane.datapath.sync import Syncer

    xdp_fd, pod_fd = xdp.functions["xdp_lb"].fd, tc.function("tc_lb_pod", bcc.BPF.SCHED_CLS).fd
    to_pod = Ether(prog_test_run(xdp_fd, bytes(tcp(CLIENT4, 50200, NODE4, 30080))).data)
    reply = bytes(
        Ether(src=NODE_MAC, dst=CLIENT_MAC)
        / IP(src=to_pod[IP].dst, dst=CLIENT4)
        / TCP(sport=to_pod[TCP].dport, dport=50200, flags="SA")
    )
    stranger = bytes(tcp(to_pod[IP].dst, to_pod[TCP].dport, CLIENT4, 50201))  # no such flow
    for mode in ("stack", "redirect"):
        Syncer(maps, dataclasses.replace(dp_config, local_delivery=mode)).sync(STATE, NODE4, NODE6)
        for pkt in (reply, stranger):
            out = prog_test_run(pod_fd, pkt)
            assert (out.retval, out.data) == (TC_NEXT, pkt), mode
    assert maps.reason_counts()["local_reply_redirected"] == 0
