"""Direct server return in the kernel (BPF_PROG_TEST_RUN): the balancing node DNATs, keeps the
client's address, carries the frontend (an IPv4 option, an IPv6 destination options header)
and forwards; the backend's node takes the carrier off and tracks the flow so that tc_lb
answers from the frontend. Every expected packet is built by scapy from the input, with its
checksums and lengths recomputed, and compared byte for byte: a table of (what, packet in,
verdict, packet out), as Katran's fixtures are."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, PadN
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import Backend, DesiredState
from tests.bpf.packets import CLIENT_MAC, checksums_valid, tcp, udp
from tests.bpf.test_xdp_forward import NODE2_MAC, REMOTE4, REMOTE6, lan  # noqa: F401
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

LB4, LB6 = "192.168.198.240", "fd00:198::f0"
NODE2_4 = "192.168.198.202"


def remote(address: str, port: int, dsr: bool = True) -> Backend:
    return Backend(address, port, "node-2", False, dsr=dsr)


STATE = DesiredState(
    frontends=(
        # balanced here, to node-2, by DSR
        frontend(NODE4, 30080, "TCP", [remote(REMOTE4, 8080)], dsr=True),
        frontend(NODE4, 30053, "UDP", [remote(REMOTE4, 5353)], dsr=True),
        frontend(NODE6, 30080, "TCP", [remote(REMOTE6, 8080)], dsr=True),
        frontend(LB4, 80, "TCP", [remote(REMOTE4, 8080)], dsr=True, kind="LoadBalancer"),
        # node-2 runs no xlb: SNAT, as without DSR
        frontend(NODE4, 30081, "TCP", [remote(REMOTE4, 8081, dsr=False)], dsr=True),
        # a backend of this node behind an LB IP balanced elsewhere by DSR, and a frontend
        # that does not use DSR
        frontend(LB4, 443, "TCP", [local("10.244.1.5", 8443)], dsr=True, kind="LoadBalancer"),
        frontend(
            LB6, 443, "TCP", [local("fd00:10:244:1::5", 8443)], dsr=True, kind="LoadBalancer"
        ),  # fmt: skip
        frontend(LB4, 444, "TCP", [local("10.244.1.5", 8444)], kind="LoadBalancer"),
        # a NodePort: a carrier names the balancing node's address, which is this node's
        # NodePort too
        frontend(NODE4, 30090, "TCP", [local("10.244.1.5", 8090)], dsr=True),
        frontend(NODE4, 30054, "UDP", [local("10.244.1.5", 5354)], dsr=True),
    ),
    node_addresses=frozenset({NODE4, NODE6, NODE2_4, "fd00:198::202"}),
)


def carried4(pkt: Ether, frontend: str, port: int) -> Ether:
    """pkt with xlb's IPv4 option (0x9e, 8 bytes: port, address) after its IP header, every
    length and checksum recomputed by scapy."""
    out = Ether(bytes(pkt))
    opt = IPOption(bytes([0x9E, 8]) + struct.pack("!H", port) + _v4(frontend))
    ip = out[IP]
    ip.options = [opt]
    del ip.ihl, ip.len, ip.chksum
    return Ether(bytes(out))


def _v4(address: str) -> bytes:
    import socket

    return socket.inet_aton(address)


def carried6(pkt: Ether, frontend: str, port: int) -> Ether:
    """pkt with xlb's destination options header (option 0x1e: port, address; PadN)."""
    import socket

    out = Ether(bytes(pkt))
    ip6 = out[IPv6]
    payload = ip6.payload
    data = struct.pack("!H", port) + socket.inet_pton(socket.AF_INET6, frontend)
    ext = IPv6ExtHdrDestOpt(options=[_Opt6(otype=0x1E, optlen=18, optdata=data), PadN(optdata=b"")])
    ip6.remove_payload()
    del ip6.plen, ip6.nh
    rebuilt = out / ext / payload
    return Ether(bytes(rebuilt))


class _Opt6(PadN):
    """An IPv6 option of any type, as scapy's PadN lays it out (type, length, data)."""

    name = "xlb DSR option"


def forwarded(pkt: Ether, src_mac: str, dst: str, dport: int, ttl_less: bool = True) -> Ether:
    """pkt DNATed to dst:dport (source kept), one hop spent, sent to node-2's MAC."""
    out = Ether(bytes(pkt))
    out.src, out.dst = src_mac, NODE2_MAC
    l3 = out[IPv6] if IPv6 in out else out[IP]
    l3.dst = dst
    if IPv6 in out:
        l3.hlim -= 1
    else:
        l3.ttl -= 1
        del l3.chksum
    l4 = out[TCP] if TCP in out else out[UDP]
    l4.dport = dport
    del l4.chksum
    return Ether(bytes(out))


@dataclass(frozen=True)
class Case:
    what: str
    packet: Ether
    verdict: int
    expect: object  # a function of the node's uplink MAC to the expected frame


@pytest.fixture
def run(xdp, maps, syncer, lan):  # noqa: F811
    syncer.sync(STATE, NODE4, NODE6)
    maps.ct.clear()
    maps.ct_new.clear()
    fd = xdp.functions["xdp_lb"].fd
    _, ifindex, _ = lan
    return lambda pkt: prog_test_run(fd, bytes(pkt), ifindex=ifindex)


SYN4 = tcp(CLIENT4, 40000, NODE4, 30080, flags="S")
BALANCING = [
    Case("IPv4 SYN to a NodePort: DNAT, client kept, option carries the NodePort",
         SYN4, XDP_TX, lambda mac: carried4(forwarded(SYN4, mac, REMOTE4, 8080), NODE4, 30080)),
    Case("IPv4 UDP datagram, carried the same way",
         udp(CLIENT4, 40002, NODE4, 30053), XDP_TX,
         lambda mac: carried4(forwarded(udp(CLIENT4, 40002, NODE4, 30053), mac, REMOTE4, 5353),
                              NODE4, 30053)),
    Case("IPv6 SYN: a destination options header carries the frontend",
         tcp(CLIENT6, 40003, NODE6, 30080, flags="S"), XDP_TX,
         lambda mac: carried6(forwarded(tcp(CLIENT6, 40003, NODE6, 30080, flags="S"), mac,
                                        REMOTE6, 8080), NODE6, 30080)),
    Case("a LoadBalancer IP's SYN with a payload of 1,000 bytes",
         tcp(CLIENT4, 40004, LB4, 80, flags="S", payload=b"x" * 1000), XDP_TX,
         lambda mac: carried4(forwarded(tcp(CLIENT4, 40004, LB4, 80, flags="S",
                                            payload=b"x" * 1000), mac, REMOTE4, 8080), LB4, 80)),
]  # fmt: skip


@pytest.mark.parametrize("case", BALANCING, ids=[c.what for c in BALANCING])
def test_the_balancing_node_carries_the_frontend_to_the_backends_node(run, lan, maps, case):  # noqa: F811
    _, _, up_mac = lan
    out = run(case.packet)
    assert out.retval == case.verdict
    want = case.expect(up_mac)
    assert checksums_valid(out.data)
    assert out.data == bytes(want), (Ether(out.data).show(dump=True), want.show(dump=True))
    assert maps.reason_counts()["dsr_carried"] >= 1


def reasons_after(maps, run_it) -> dict[str, int]:
    before = maps.reason_counts()
    run_it()
    return {k: v - before[k] for k, v in maps.reason_counts().items() if v != before[k]}


def test_a_new_dsr_flow_costs_one_conntrack_insert_and_its_ack_establishes_it(run, maps):
    out = run(SYN4)
    assert out.retval == XDP_TX
    assert (len(maps.ct_new), len(maps.ct)) == (1, 0)  # no reverse entry: replies skip us
    ack = tcp(CLIENT4, 40000, NODE4, 30080, flags="A", payload=b"GET / HTTP/1.0\r\n\r\n")
    out = run(ack)
    assert out.retval == XDP_TX
    assert Ether(out.data)[IP].options[0].option == 0x1E  # carried again: every packet
    assert (len(maps.ct_new), len(maps.ct)) == (0, 1)  # the client's ACK: established


def test_a_backend_on_a_node_without_xlb_is_reached_by_snat(run, maps):
    got = reasons_after(maps, lambda: run(tcp(CLIENT4, 40010, NODE4, 30081, flags="S")))
    assert "dsr_carried" not in got
    out = Ether(run(tcp(CLIENT4, 40011, NODE4, 30081, flags="S")).data)
    assert (out[IP].src, out[IP].dst, out[IP].ihl) == (NODE4, REMOTE4, 5)


def test_a_packet_with_ip_options_is_snated_and_said_so(run, maps):
    pkt = tcp(CLIENT4, 40012, NODE4, 30080, flags="S", options=[IPOption(b"\x94\x04\x00\x00")])
    outs = []
    got = reasons_after(maps, lambda: outs.append(run(pkt)))
    fwd = Ether(outs[0].data)
    assert outs[0].retval == XDP_TX and (fwd[IP].src, fwd[IP].dst) == (NODE4, REMOTE4)
    assert got == {"dsr_not_carriable": 1}
    assert checksums_valid(outs[0].data)


def test_a_mid_stream_packet_is_picked_up_to_the_backend_maglev_gives(run, maps):
    """The LB IP moved to this node: the flow's packets come without a conntrack entry here.
    By SNAT such a packet is dropped (it would need a port); by DSR it goes on, to the backend
    Maglev picks on every node alike, whose node holds the flow."""
    ack = tcp(CLIENT4, 40020, LB4, 80, flags="A", payload=b"more data")
    out = run(ack)
    assert out.retval == XDP_TX
    fwd = Ether(out.data)
    assert (fwd[IP].src, fwd[IP].dst, fwd[TCP].dport) == (CLIENT4, REMOTE4, 8080)
    assert fwd[IP].options[0].option == 0x1E


def test_a_udp_flow_is_established_by_its_clients_second_datagram(run, maps):
    """No reply ever comes this way: the client's second datagram moves the lone entry to
    the established table, out of reach of a flood of first datagrams."""
    for _ in range(2):
        assert run(udp(CLIENT4, 40040, NODE4, 30053)).retval == XDP_TX
    assert (len(maps.ct_new), len(maps.ct)) == (0, 1)


def test_a_packet_too_big_with_the_carrier_is_dropped_and_counted(run, maps):
    big = udp(CLIENT4, 40030, NODE4, 30053, payload=b"x" * (1500 - 28))  # IP length 1500
    got = reasons_after(maps, lambda: run(big))
    assert got.get("drop_dsr_too_big") == 1
    ok = udp(CLIENT4, 40031, NODE4, 30053, payload=b"x" * (1500 - 28 - 8))
    assert run(ok).retval == XDP_TX


# -- the backend's node ---------------------------------------------------------------------


def to_pod(src: str, sport: int, pod: str, port: int, flags: str = "S") -> Ether:
    """What the balancing node sends on: the client's packet DNATed to the pod."""
    return tcp(src, sport, pod, port, flags=flags, payload=b"hello")


DELIVERED = [
    Case("IPv4: the option comes off, the packet is the balancing node's DNAT",
         carried4(to_pod(CLIENT4, 41000, "10.244.1.5", 8443), LB4, 443), XDP_PASS,
         lambda _: to_pod(CLIENT4, 41000, "10.244.1.5", 8443)),
    Case("IPv4: another node's NodePort (a Node's address, this node's NodePort)",
         carried4(to_pod(CLIENT4, 41002, "10.244.1.5", 8090), NODE2_4, 30090), XDP_PASS,
         lambda _: to_pod(CLIENT4, 41002, "10.244.1.5", 8090)),
    Case("IPv6: the destination options header comes off",
         carried6(to_pod(CLIENT6, 41001, "fd00:10:244:1::5", 8443), LB6, 443), XDP_PASS,
         lambda _: to_pod(CLIENT6, 41001, "fd00:10:244:1::5", 8443)),
]  # fmt: skip


@pytest.mark.parametrize("case", DELIVERED, ids=[c.what for c in DELIVERED])
def test_the_backends_node_takes_the_carrier_off_and_answers_from_the_frontend(run, tc, maps, case):
    out = run(case.packet)
    assert out.retval == case.verdict
    assert out.data == bytes(case.expect(None)), Ether(out.data).show(dump=True)
    assert maps.reason_counts()["dsr_delivered"] >= 1
    # the pod's reply leaves through tc_lb from the frontend the client addressed
    got = Ether(out.data)
    l3 = IPv6 if IPv6 in got else IP
    reply = (
        Ether(src=got.dst, dst=CLIENT_MAC)
        / l3(src=got[l3].dst, dst=got[l3].src)
        / TCP(sport=got[TCP].dport, dport=got[TCP].sport, flags="SA", seq=9, ack=1006,
              options=[("NOP", None), ("WScale", 7), ("MSS", 1460), ("SAckOK", b"")])
    )  # fmt: skip
    answered = prog_test_run(tc.functions["tc_lb"].fd, bytes(reply))
    back = Ether(answered.data)
    frontend, port = _carried(case.packet)
    assert (back[l3].src, back[TCP].sport) == (frontend, port)
    assert (back[l3].dst, back[TCP].dport) == (got[l3].src, got[TCP].sport)
    # the client's packets grow by the carrier: it is told to send that much less
    assert dict(back[TCP].options)["MSS"] == 1460 - (24 if l3 is IPv6 else 8)
    assert checksums_valid(answered.data)


def _carried(pkt: Ether) -> tuple[str, int]:
    """The frontend a carrier in pkt names, read by scapy."""
    import socket

    raw = bytes(pkt)
    if IPv6 in pkt:
        data = raw[14 + 40 + 4 : 14 + 40 + 22]
        return socket.inet_ntop(socket.AF_INET6, data[2:]), struct.unpack("!H", data[:2])[0]
    opt = raw[14 + 20 : 14 + 28]
    return socket.inet_ntoa(opt[4:]), struct.unpack("!H", opt[2:4])[0]


FORGED = [
    ("a frontend that does not use DSR", carried4(to_pod(CLIENT4, 41010, "10.244.1.5", 8444),
                                                  LB4, 444)),
    ("an address that is no frontend", carried4(to_pod(CLIENT4, 41011, "10.244.1.5", 8443),
                                                "198.51.100.9", 443)),
    ("the right address, another port", carried4(to_pod(CLIENT4, 41012, "10.244.1.5", 8443),
                                                 LB4, 8443)),
    ("a NodePort's port at an address that is no Node's",
     carried4(to_pod(CLIENT4, 41014, "10.244.1.5", 8090), "198.51.100.9", 30090)),
    ("a packet to a frontend, not a pod", carried4(to_pod(CLIENT4, 41015, LB4, 443), LB4, 443)),
    ("an IPv4 frontend in an IPv6 packet", carried6(to_pod(CLIENT6, 41013, "fd00:10:244:1::5",
                                                           8443), "::ffff:" + LB4, 443)),
]  # fmt: skip


@pytest.mark.parametrize("what,pkt", FORGED, ids=[w for w, _ in FORGED])
def test_a_carrier_naming_no_dsr_frontend_is_dropped_and_makes_no_entry(run, maps, what, pkt):
    got = reasons_after(maps, lambda: run(pkt))
    assert got == {"drop_dsr_forged": 1}, what
    assert (len(maps.ct_new), len(maps.ct)) == (0, 0)


def fragments(datagram: Ether, size: int) -> list[Ether]:
    from scapy.layers.inet import fragment

    return [Ether(src=datagram.src, dst=datagram.dst) / f
            for f in fragment(datagram[IP], fragsize=size)]  # fmt: skip


def reassembled(frames: list[Ether]) -> IP:
    """The datagram the frames' fragments make, its UDP checksum checked."""
    from scapy.layers.inet import defragment

    whole = IP(bytes(defragment([IP(bytes(f[IP])) for f in frames])[0]))
    sent_sum = whole[UDP].chksum
    del whole[UDP].chksum
    assert IP(bytes(whole))[UDP].chksum == sent_sum, "UDP checksum"
    return whole


def test_a_flow_that_starts_fragmented_goes_by_snat_fragment_by_fragment(run, maps):
    """IPv4: a first fragment at the MTU has no room for the carrier, so a flow whose first
    packet is a fragment is SNATed (dsr_not_carriable), and its later fragment, which has no
    ports, follows it by the fragment's id (frag.h): both from the node, to the backend."""
    datagram = udp(CLIENT4, 40050, NODE4, 30053, payload=b"y" * 2000)
    datagram[IP].id = 4242
    frames = fragments(datagram, 1480)
    outs = []
    got = reasons_after(maps, lambda: outs.extend(run(f) for f in frames))
    assert [o.retval for o in outs] == [XDP_TX, XDP_TX], got
    assert got.get("dsr_not_carriable") == 1 and "dsr_carried" not in got, got
    forwarded = [Ether(o.data) for o in outs]
    for fwd in forwarded:
        assert (fwd[IP].src, fwd[IP].dst, fwd[IP].id, fwd[IP].ihl) == (NODE4, REMOTE4, 4242, 5)
    whole = reassembled(forwarded)
    assert (whole[UDP].dport, bytes(whole[UDP].payload)) == (5353, b"y" * 2000)


def test_a_dsr_flows_fragments_are_carried_each(run, maps):
    """IPv4: a flow that started by DSR keeps it: each fragment of its later datagram gets
    the carrier (an option a router copies into every fragment: 0x9e), the first found by
    its ports, the later by the fragment's id, and the datagram they make is the client's,
    DNATed."""
    assert run(udp(CLIENT4, 40060, NODE4, 30053)).retval == XDP_TX  # the flow, by DSR
    datagram = udp(CLIENT4, 40060, NODE4, 30053, payload=b"z" * 2000)
    datagram[IP].id = 4343
    frames = fragments(datagram, 1200)
    outs = []
    got = reasons_after(maps, lambda: outs.extend(run(f) for f in frames))
    assert [o.retval for o in outs] == [XDP_TX, XDP_TX] and got.get("dsr_carried") == 2, got
    forwarded = [Ether(o.data) for o in outs]
    for fwd, sent in zip(forwarded, frames, strict=True):
        assert (fwd[IP].src, fwd[IP].dst, fwd[IP].id) == (CLIENT4, REMOTE4, 4343)
        assert fwd[IP].options[0].option == 0x1E  # 0x9e: copied, class 0, number 30
        assert (fwd[IP].frag, fwd[IP].flags) == (sent[IP].frag, sent[IP].flags)
    whole = reassembled(forwarded)
    assert (whole[UDP].dport, bytes(whole[UDP].payload)) == (5353, b"z" * 2000)


def test_the_backends_node_takes_the_carrier_off_each_fragment(run, maps):
    """IPv4: a DSR datagram's fragments, carried from another node's NodePort, reach the pod
    here each without the carrier (the later one known by the first's id), and make the
    datagram the balancing node sent."""
    datagram = udp(CLIENT4, 41100, "10.244.1.5", 5354, payload=b"w" * 2000)
    datagram[IP].id = 4444
    frames = [carried4(f, NODE2_4, 30054) for f in fragments(datagram, 1200)]
    outs = []
    got = reasons_after(maps, lambda: outs.extend(run(f) for f in frames))
    assert [o.retval for o in outs] == [XDP_PASS, XDP_PASS], got
    assert got.get("dsr_delivered") == 2 and "drop_dsr_forged" not in got, got
    delivered = [Ether(o.data) for o in outs]
    for out, sent in zip(delivered, frames, strict=True):
        assert (out[IP].ihl, out[IP].id, out[IP].frag) == (5, 4444, sent[IP].frag)
        assert (out[IP].src, out[IP].dst) == (CLIENT4, "10.244.1.5")
    assert bytes(reassembled(delivered)[UDP].payload) == b"w" * 2000
