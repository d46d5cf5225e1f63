"""ICMP errors about tracked flows, translated as netfilter translates them
(nf_nat_icmp_reply_translation): the quoted packet back to what its sender sent, the error
to that sender, every checksum right (scapy recomputes them). Path-MTU discovery through a
Service depends on it, and so does a UDP client's ECONNREFUSED. Table: (description, the
flow, who sends the error about which packet, expected verdict, expected outer and inner
tuples)."""

from __future__ import annotations

from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
)
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import DesiredState
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, checksums_valid, tcp, udp
from tests.bpf.test_xdp_forward import NODE2_MAC, REMOTE4, REMOTE6, lan, remote  # noqa: F401
from tests.bpf.test_xdp_lb import (
    CLIENT4,
    CLIENT6,
    NODE4,
    NODE6,
    XDP_PASS,
    XDP_TX,
    frontend,
    local,
)

TC_NEXT = 0xFFFFFFFF
POD4, POD6 = "10.244.1.6", "fd00:10:244:1::6"
ROUTER4, ROUTER6 = "198.51.100.1", "2001:db8:ffff::1"
STATE = DesiredState(
    frontends=(
        frontend(NODE4, 30053, "UDP", [local(POD4, 5353)]),
        frontend(NODE6, 30053, "UDP", [local(POD6, 5353)]),
        frontend(NODE4, 30080, "TCP", [local(POD4, 8080)]),
        frontend(NODE4, 30081, "TCP", [remote(REMOTE4, 8080)]),
        frontend(NODE6, 30081, "TCP", [remote(REMOTE6, 8080)]),
    )
)


@pytest.fixture
def progs(xdp, tc, maps, syncer, lan):  # noqa: F811
    syncer.sync(STATE, NODE4, NODE6)
    _, ifindex, _ = lan
    xdp_fd, tc_fd = xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd
    return (lambda f: prog_test_run(xdp_fd, bytes(f), ifindex=ifindex),
            lambda f: prog_test_run(tc_fd, bytes(f)))  # fmt: skip


def l3(pkt):
    return pkt[IPv6] if IPv6 in pkt else pkt[IP]


def error(src: str, dst: str, quoted: bytes, v6: bool, too_big: bool = True, src_mac=CLIENT_MAC):
    """An ICMP error from src to dst quoting the IP packet quoted (RFC 1812 4.3.2.3: as much
    as fits), as a router sends it (fragmentation needed / packet too big), or a host
    (port unreachable)."""
    eth = Ether(src=src_mac, dst=NODE_MAC)
    if v6:
        kind = ICMPv6PacketTooBig(mtu=1280) if too_big else ICMPv6DestUnreach(code=4)
        return eth / IPv6(src=src, dst=dst) / kind / quoted
    kind = ICMP(type=3, code=4, nexthopmtu=1400) if too_big else ICMP(type=3, code=3)
    return eth / IP(src=src, dst=dst) / kind / quoted


def quote_of(frame: bytes) -> bytes:
    """The IP packet of a frame, as an error quotes it."""
    pkt = Ether(frame)
    return bytes(l3(pkt))


def inner_ip_sum_ok(pkt) -> bool:
    """Whether a quoted IPv4 header's checksum is what scapy computes (IPv6 has none)."""
    if IPerror not in pkt:
        return True
    fresh = IPerror(bytes(pkt[IPerror]))
    want = fresh.chksum
    del fresh.chksum
    return IPerror(bytes(fresh)).chksum == want


def inner_tuple(pkt):
    in3 = pkt[IPerror6] if IPerror6 in pkt else pkt[IPerror]
    in4 = next(pkt[c] for c in (TCPerror, UDPerror) if c in pkt)
    return in3.src, in4.sport, in3.dst, in4.dport


def test_a_pods_port_unreachable_reaches_the_client_about_what_it_sent(progs):
    """UDP to a NodePort whose pod has no socket: the pod's stack answers port unreachable
    quoting the datagram it got (DNATed); the client must see it from the NodePort, quoting
    its own datagram, or its connected socket never gets ECONNREFUSED."""
    through_xdp, through_tc = progs
    for client, node, pod in ((CLIENT4, NODE4, POD4), (CLIENT6, NODE6, POD6)):
        sent = udp(client, 42000, node, 30053, payload=b"query")
        delivered = through_xdp(sent)
        assert delivered.retval == XDP_PASS
        err = error(pod, client, quote_of(delivered.data), ":" in client, too_big=False,
                    src_mac=NODE_MAC)  # fmt: skip
        out = through_tc(err)
        assert out.retval == TC_NEXT
        got = Ether(out.data)
        assert (l3(got).src, l3(got).dst) == (node, client)
        assert inner_tuple(got) == (client, 42000, node, 30053)
        assert checksums_valid(out.data) and inner_ip_sum_ok(got), got.show(dump=True)
        # the quote is the client's own datagram again, its UDP checksum too
        quoted_udp = got[UDPerror]
        assert quoted_udp.chksum == Ether(bytes(sent))[UDP].chksum


def test_fragmentation_needed_for_a_local_pods_reply_reaches_the_pod(progs):
    """A router on the client's side cannot pass the pod's reply (it left as the NodePort):
    the error comes to the NodePort and must reach the pod, about the pod's own packet."""
    through_xdp, through_tc = progs
    through_xdp(tcp(CLIENT4, 42100, NODE4, 30080))
    reply = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=POD4, dst=CLIENT4) / TCP(
        sport=8080, dport=42100, flags="SA") / (b"x" * 40)  # fmt: skip
    left = through_tc(reply)  # leaves as NODE4:30080
    assert l3(Ether(left.data)).src == NODE4
    out = through_xdp(error(ROUTER4, NODE4, quote_of(left.data), False))
    assert out.retval == XDP_PASS
    got = Ether(out.data)
    assert (got[IP].src, got[IP].dst) == (ROUTER4, POD4)  # a router's source stays its own
    assert inner_tuple(got) == (POD4, 8080, CLIENT4, 42100)
    assert checksums_valid(out.data) and inner_ip_sum_ok(got)
    assert got[TCPerror].chksum == Ether(bytes(reply))[TCP].chksum


SIDES = [(CLIENT4, NODE4, REMOTE4, ROUTER4), (CLIENT6, NODE6, REMOTE6, ROUTER6)]


@pytest.mark.parametrize("client,node,backend,router", SIDES)
def test_path_mtu_errors_of_a_flow_to_a_remote_backend_go_to_the_right_side(
    progs, client, node, backend, router
):
    through_xdp, _ = progs
    v6 = ":" in client
    syn = tcp(client, 42200, node, 30081)
    fwd = through_xdp(syn)
    assert fwd.retval == XDP_TX
    snat = Ether(fwd.data)[TCP].sport

    # the path to the backend is narrower: the error, about the node's packet, goes to the
    # client, about the client's packet, from the NodePort
    out = through_xdp(error(router, node, quote_of(fwd.data), v6))
    assert out.retval == XDP_TX
    got = Ether(out.data)
    assert got.dst == CLIENT_MAC and (l3(got).src, l3(got).dst) == (node, client)
    assert inner_tuple(got) == (client, 42200, node, 30081)
    assert checksums_valid(out.data) and inner_ip_sum_ok(got)

    # the path back to the client is narrower: the error about the reply goes to the backend,
    # about the backend's packet (its source port as the backend knows it: the SNAT port)
    reply = Ether(src=NODE2_MAC, dst=NODE_MAC) / (IPv6 if v6 else IP)(src=backend, dst=node) / TCP(
        sport=8080, dport=snat, flags="SA") / (b"y" * 40)  # fmt: skip
    back = through_xdp(reply)
    assert back.retval == XDP_TX
    out = through_xdp(error(router, node, quote_of(back.data), v6))
    assert out.retval == XDP_TX
    got = Ether(out.data)
    assert got.dst == NODE2_MAC and (l3(got).src, l3(got).dst) == (node, backend)
    assert inner_tuple(got) == (backend, 8080, node, snat)
    assert checksums_valid(out.data) and inner_ip_sum_ok(got)


def test_errors_about_nothing_tracked_or_to_the_wrong_host_pass_untouched(progs, maps):
    through_xdp, through_tc = progs
    through_xdp(udp(CLIENT4, 42300, NODE4, 30053))
    tracked_quote = bytes(IP(src=NODE4, dst=CLIENT4) / UDP(sport=30053, dport=42300))
    before = Counter(maps.reason_counts())
    frames = [
        # a flow nobody has
        error(ROUTER4, NODE4, bytes(IP(src=NODE4, dst=CLIENT4) / UDP(sport=30053, dport=9)), False),
        # about a tracked flow, but to another host than the quoted packet's sender
        error(ROUTER4, "192.168.198.99", tracked_quote, False),
        # not an error
        Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT4, dst=NODE4) / ICMP() / tracked_quote,
        Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT6, dst=NODE6) / ICMPv6EchoRequest(),
        # a quote too short for its ports
        error(ROUTER4, NODE4, tracked_quote[:22], False),
        # IPv4 that says protocol 58: ICMPv6's number, not ICMP (the fuzzer's find)
        Ether(
            bytes(error(ROUTER4, NODE4, tracked_quote, False))[:23]
            + b"\x3a"
            + bytes(error(ROUTER4, NODE4, tracked_quote, False))[24:]
        ),
        # a local pod's reply tuple arriving from outside: only tc_lb acts on those
        error(
            ROUTER4, CLIENT4, bytes(IP(src=CLIENT4, dst=POD4) / UDP(sport=42300, dport=5353)), False
        ),  # fmt: skip
    ]
    for f in frames:
        out = through_xdp(f)
        assert (out.retval, out.data) == (XDP_PASS, bytes(f)), f.summary()
    assert Counter(maps.reason_counts())["icmp_translated"] == before["icmp_translated"]
    # and tc_lb leaves an error about a pod's flow nobody tracks as it is
    stray = error(POD4, CLIENT4, bytes(IP(src=CLIENT4, dst=POD4) / UDP(sport=1, dport=5353)),
                  False, too_big=False)  # fmt: skip
    out = through_tc(stray)
    assert (out.retval, out.data) == (TC_NEXT, bytes(stray))
    # a tracked pod's port unreachable in an IPv4 packet that says protocol 58: not ICMP
    delivered = through_xdp(udp(CLIENT4, 42301, NODE4, 30053))
    wrong = bytearray(bytes(error(POD4, CLIENT4, quote_of(delivered.data), False,
                                  too_big=False, src_mac=NODE_MAC)))  # fmt: skip
    wrong[23] = 58
    out = through_tc(bytes(wrong))
    assert (out.retval, out.data) == (TC_NEXT, bytes(wrong))
