"""xdp_lb on real packets in the kernel (BPF_PROG_TEST_RUN), Katran-style tables:
(description, input packet, expected verdict, expected output packet)."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import time
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Dot1Q, Ether

from controlplane.datapath import constants
from controlplane.datapath.syscall import prog_test_run
from controlplane.model.objects import Protocol
from controlplane.model.state import (
    Algorithm,
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    NoBackend,
    Scope,
)
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, checksums_valid, rewritten, tcp, udp

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
NODE4, NODE6 = "192.168.198.201", "fd00:198::201"
CLIENT4, CLIENT6 = "203.0.113.7", "2001:db8::7"


def local(address: str, port: int, **kw) -> Backend:
    return Backend(address, port, "node-1", True, **kw)


def frontend(address: str, port: int, proto: str, backends=(), **kw) -> Frontend:
    kw.setdefault("algorithm", Algorithm.MAGLEV)
    return Frontend(
        service=kw.pop("service", f"default/{address}-{port}-{proto}"),
        port_name="",
        kind=kw.pop("kind", FrontendKind.NODE_PORT),
        scope=Scope.EXTERNAL,
        address=address,
        port=port,
        protocol=Protocol(proto),
        backends=tuple(backends),
        **kw,
    )


STATE = DesiredState(
    frontends=(
        frontend(NODE4, 30080, "TCP", [local("10.244.1.5", 8080)]),
        frontend(NODE4, 30053, "UDP", [local("10.244.1.6", 5353)]),
        frontend(NODE6, 30080, "TCP", [local("fd00:10:244:1::5", 8080)]),
        frontend(NODE6, 30053, "UDP", [local("fd00:10:244:1::6", 5353)]),
        frontend("192.168.198.10", 80, "TCP"),
        frontend("192.168.198.10", 53, "UDP"),
        frontend("fd00:198::10", 80, "TCP"),
        frontend("fd00:198::10", 53, "UDP"),
        frontend("192.168.198.11", 80, "TCP", no_backend=NoBackend.DROP, preserve_client_ip=True),
        frontend(
            "192.168.198.240",
            80,
            "TCP",
            [local("10.244.1.5", 8080)],
            kind=FrontendKind.LOAD_BALANCER,
            source_ranges=("203.0.113.0/24",),
        ),
        frontend(
            "192.168.198.12",
            80,
            "TCP",
            [local(f"10.244.1.{i}", 80) for i in (7, 8, 9)],
            algorithm=Algorithm.RANDOM,
            affinity_timeout=10800,
        ),
    )
)


@pytest.fixture
def run(xdp, maps, syncer):
    syncer.sync(STATE, NODE4, NODE6)
    fd = xdp.functions["xdp_lb"].fd

    def go(pkt):
        raw = pkt if isinstance(pkt, bytes) else bytes(pkt)
        return prog_test_run(fd, raw)

    return go


def reasons(maps) -> Counter:
    return Counter(maps.reason_counts())


DNAT_CASES = [
    (
        "TCP SYN to a NodePort, local backend: DNAT",
        tcp(CLIENT4, 40000, NODE4, 30080),
        "10.244.1.5",
        8080,
    ),
    (
        "TCP with payload and ACK",
        tcp(CLIENT4, 40001, NODE4, 30080, flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"),
        "10.244.1.5",
        8080,
    ),
    ("UDP datagram", udp(CLIENT4, 40002, NODE4, 30053), "10.244.1.6", 5353),
    ("UDP with no payload", udp(CLIENT4, 40003, NODE4, 30053, payload=b""), "10.244.1.6", 5353),
    (
        "IPv4 with options",
        tcp(CLIENT4, 40004, NODE4, 30080, options=b"\x01\x01\x01\x00"),
        "10.244.1.5",
        8080,
    ),
    ("IPv6 TCP", tcp(CLIENT6, 40005, NODE6, 30080), "fd00:10:244:1::5", 8080),
    ("IPv6 UDP", udp(CLIENT6, 40006, NODE6, 30053), "fd00:10:244:1::6", 5353),
    ("IPv6 UDP, empty", udp(CLIENT6, 40007, NODE6, 30053, payload=b""), "fd00:10:244:1::6", 5353),
]


@pytest.mark.parametrize("description,pkt,backend,port", DNAT_CASES, ids=[c[0] for c in DNAT_CASES])
def test_new_flow_to_local_backend_is_dnated_and_passed(run, description, pkt, backend, port):
    out = run(pkt)
    assert out.retval == XDP_PASS, description
    assert out.data == bytes(rewritten(pkt, dst=backend, dport=port)), description
    assert checksums_valid(out.data)


def test_ipv4_udp_without_checksum_keeps_zero(run):
    pkt = udp(CLIENT4, 40100, NODE4, 30053)
    pkt[UDP].chksum = 0
    out = run(Ether(bytes(pkt)))
    assert out.retval == XDP_PASS
    assert Ether(out.data)[UDP].chksum == 0
    assert Ether(out.data)[IP].dst == "10.244.1.6"


def test_udp_checksum_that_becomes_zero_is_sent_as_ffff(run):
    # search for a source port whose rewritten checksum computes to zero
    for sport in range(1024, 65535):
        expected = rewritten(udp(CLIENT4, sport, NODE4, 30053), dst="10.244.1.6", dport=5353)
        if expected[UDP].chksum == 0xFFFF:  # scapy also mangles 0 to 0xffff
            break
    out = run(udp(CLIENT4, sport, NODE4, 30053))
    assert Ether(out.data)[UDP].chksum == 0xFFFF


def test_non_service_packets_pass_byte_identical(run, maps):
    before = reasons(maps)
    for pkt in (
        tcp(CLIENT4, 1, NODE4, 22),
        udp(CLIENT4, 1, NODE4, 30054),
        tcp(CLIENT6, 1, NODE6, 22),
        tcp(CLIENT4, 1, "192.168.198.240", 443),
    ):
        out = run(pkt)
        assert (out.retval, out.data) == (XDP_PASS, bytes(pkt))
    assert reasons(maps)["pass_no_service"] - before["pass_no_service"] == 4


def test_established_flow_keeps_its_backend(run, maps, syncer):
    """Conntrack alone keeps a flow on its backend: a frontend without session affinity
    whose algorithm picks at random among three backends, so that any packet not matched
    to its flow's entry would land on another backend two times in three."""
    spread = frontend(
        "192.168.198.13", 80, "TCP", [local(f"10.244.1.{i}", 80) for i in (7, 8, 9)],
        algorithm=Algorithm.RANDOM,
    )  # fmt: skip
    syncer.sync(DesiredState(frontends=(*STATE.frontends, spread)), NODE4, NODE6)
    first = {
        sport: Ether(run(tcp(CLIENT4, sport, "192.168.198.13", 80)).data)[IP].dst
        for sport in range(41000, 41012)
    }
    assert len(set(first.values())) > 1  # the flows were spread: a new pick may differ
    for _ in range(5):
        for sport, backend in first.items():
            ack = tcp(CLIENT4, sport, "192.168.198.13", 80, flags="A")
            assert Ether(run(ack).data)[IP].dst == backend, sport


def test_reject_tcp_with_rst(run, maps):
    before = reasons(maps)
    syn = tcp(CLIENT4, 42000, "192.168.198.10", 80)
    out = run(syn)
    assert out.retval == XDP_TX
    rst = Ether(out.data)
    assert (rst.src, rst.dst) == (NODE_MAC, CLIENT_MAC)
    assert (rst[IP].src, rst[IP].dst) == ("192.168.198.10", CLIENT4)
    assert (rst[TCP].sport, rst[TCP].dport) == (80, 42000)
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001 and rst[TCP].seq == 0
    assert len(rst[TCP].payload) == 0 and checksums_valid(out.data)
    assert reasons(maps)["reject_no_backend"] - before["reject_no_backend"] == 1
    # a segment with ACK gets a RST whose sequence number is that ACK
    out = run(tcp(CLIENT4, 42000, "192.168.198.10", 80, flags="PA", payload=b"xyz"))
    rst = Ether(out.data)
    assert rst[TCP].flags == "R" and rst[TCP].seq == 5000 and checksums_valid(out.data)
    # never answer a RST
    assert run(tcp(CLIENT4, 42000, "192.168.198.10", 80, flags="R")).retval == XDP_DROP


def test_reject_tcp_ipv6(run):
    out = run(tcp(CLIENT6, 42001, "fd00:198::10", 80))
    rst = Ether(out.data)
    assert out.retval == XDP_TX and rst[IPv6].dst == CLIENT6 and rst[IPv6].src == "fd00:198::10"
    assert rst[TCP].flags == "RA" and rst[IPv6].plen == 20 and checksums_valid(out.data)


def test_reject_udp_with_icmp_port_unreachable(run):
    pkt = udp(CLIENT4, 42002, "192.168.198.10", 53, payload=b"x" * 100)
    out = run(pkt)
    assert out.retval == XDP_TX
    icmp = Ether(out.data)
    assert (icmp.src, icmp.dst) == (NODE_MAC, CLIENT_MAC)
    assert (icmp[IP].src, icmp[IP].dst, icmp[IP].proto) == ("192.168.198.10", CLIENT4, 1)
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 3)
    assert icmp[IPerror].src == CLIENT4 and icmp[UDPerror].dport == 53
    assert len(out.data) == 14 + 20 + 8 + 20 + 8
    assert checksums_valid(out.data)


def test_reject_udp_ipv6_with_icmpv6(run):
    out = run(udp(CLIENT6, 42003, "fd00:198::10", 53, payload=b"y" * 64))
    reply = Ether(out.data)
    assert out.retval == XDP_TX and reply[IPv6].dst == CLIENT6
    unreach = reply[ICMPv6DestUnreach]
    assert unreach.code == 4 and len(out.data) == 14 + 40 + 8 + 40 + 8
    assert checksums_valid(out.data)


def test_local_policy_without_local_backend_drops(run, maps):
    before = reasons(maps)
    assert run(tcp(CLIENT4, 43000, "192.168.198.11", 80)).retval == XDP_DROP
    assert reasons(maps)["drop_no_backend"] - before["drop_no_backend"] == 1


def test_source_ranges(run, maps):
    allowed = tcp(CLIENT4, 44000, "192.168.198.240", 80)
    out = run(allowed)
    assert out.retval == XDP_PASS and Ether(out.data)[IP].dst == "10.244.1.5"
    before = reasons(maps)
    assert run(tcp("198.51.100.9", 44000, "192.168.198.240", 80)).retval == XDP_DROP
    assert reasons(maps)["drop_source_range"] - before["drop_source_range"] == 1


def test_session_affinity_keeps_a_client_on_one_backend(run):
    chosen = {
        Ether(run(tcp(CLIENT4, sport, "192.168.198.12", 80)).data)[IP].dst
        for sport in range(45000, 45030)
    }
    assert len(chosen) == 1
    others = {
        Ether(run(tcp(f"203.0.113.{i}", 45000, "192.168.198.12", 80)).data)[IP].dst
        for i in range(20, 80)
    }
    assert len(others) == 3  # random spreads other clients over all three


def test_each_new_connection_of_a_pinned_client_refreshes_its_pin(run, maps):
    run(tcp(CLIENT4, 45100, "192.168.198.12", 80))
    ((key, first),) = maps.affinity.items()
    time.sleep(0.02)  # past the coarse clock's tick
    run(tcp(CLIENT4, 45101, "192.168.198.12", 80))
    ((_, second),) = maps.affinity.items()  # one entry, its stamp moved on
    assert second.backend == first.backend and second.last_used > first.last_used


def test_a_pin_never_follows_its_backend_id_to_another_services_pod(run, maps, syncer):
    """The pinned endpoint goes; another Service's new pod gets its id (new backends take
    the lowest free ones). The client's next connection stays with its own Service's backends."""
    pinned = Ether(run(tcp(CLIENT4, 45200, "192.168.198.12", 80)).data)[IP].dst
    ((_, pin),) = maps.affinity.items()
    affine = STATE.frontends[-1]
    rest = tuple(b for b in affine.backends if b.address != pinned)
    without = (*STATE.frontends[:-1], dataclasses.replace(affine, backends=rest))
    syncer.sync(DesiredState(frontends=tuple(without)), NODE4, NODE6)
    pods = [local(f"10.244.9.{i}", 80) for i in range(1, 17)]  # enough to fill every hole
    other = frontend("192.168.198.13", 80, "TCP", pods)
    syncer.sync(DesiredState(frontends=(*without, other)), NODE4, NODE6)
    assert pin.backend in {syncer.backend_ids[(b.address, 80)] for b in pods}  # id reused
    out = Ether(run(tcp(CLIENT4, 45201, "192.168.198.12", 80)).data)
    assert out[IP].dst in {b.address for b in rest}, out[IP].dst
    ((_, repinned),) = maps.affinity.items()
    assert repinned.backend != pin.backend


def test_the_new_flow_tail_alone_does_what_xdp_lb_does(xdp, run):
    """An older build's xdp_lb may call this build's tail (bpf/lib/tail.h) and hand it
    nothing: the tail then parses and looks up for itself, with the same result."""
    tail = xdp.functions["xdp_lb__new_flow"].fd
    for sport, pkt in enumerate(
        (tcp(CLIENT4, 0, NODE4, 30080), udp(CLIENT6, 0, NODE6, 30053)), start=46000
    ):
        pkt[TCP if TCP in pkt else UDP].sport = sport
        alone = prog_test_run(tail, bytes(pkt))
        pkt[TCP if TCP in pkt else UDP].sport = sport + 100
        whole = run(pkt)
        assert alone.retval == whole.retval == XDP_PASS
        a, w = Ether(alone.data), Ether(whole.data)
        l3 = IP if IP in a else IPv6
        assert a[l3].dst == w[l3].dst and checksums_valid(alone.data)


def test_without_its_tail_xdp_lb_passes_new_flows_and_says_why(xdp, run, maps):
    array = xdp.table("xlb_tail_xdp_lb")
    index = ct.c_int(constants.value("XLB_TAIL_NEW_FLOW"))
    fd = xdp.functions["xdp_lb__new_flow"].fd
    before = reasons(maps)
    del array[index]
    try:
        pkt = tcp(CLIENT4, 46200, NODE4, 30080)
        out = run(pkt)
        assert out.retval == XDP_PASS and out.data == bytes(pkt)
        assert reasons(maps)["pass_no_tail"] - before["pass_no_tail"] == 1
    finally:
        array[index] = ct.c_int(fd)
    assert Ether(run(tcp(CLIENT4, 46201, NODE4, 30080)).data)[IP].dst == "10.244.1.5"


def test_counters_per_frontend(run, maps, syncer):
    svc_id = syncer.frontends[(NODE4, 30080, Protocol.TCP, Scope.EXTERNAL)].id
    before = maps.svc_counts(svc_id)
    pkt = tcp(CLIENT4, 46000, NODE4, 30080)
    run(pkt)
    run(tcp(CLIENT4, 46000, NODE4, 30080, flags="A"))
    after = maps.svc_counts(svc_id)
    assert after["packets"] - before["packets"] == 2
    assert after["new_flows"] - before["new_flows"] == 1
    assert after["bytes"] - before["bytes"] == 2 * len(pkt)


# -- malformed input: never aborted, never rewritten, always counted ---------------------------

GOOD = [
    tcp(CLIENT4, 47000, NODE4, 30080),
    udp(CLIENT4, 47001, NODE4, 30053),
    tcp(CLIENT6, 47002, NODE6, 30080),
    udp(CLIENT6, 47003, NODE6, 30053),
]


@pytest.mark.parametrize("good", GOOD, ids=["tcp4", "udp4", "tcp6", "udp6"])
def test_truncated_at_every_length_passes_untouched_and_counted(run, maps, good):
    raw = bytes(good)
    before = sum(reasons(maps).values())
    for cut in range(len(raw)):
        out = run(raw[:cut]) if cut >= 14 else None
        if out is None:  # the kernel refuses runs shorter than an Ethernet header
            continue
        assert out.retval == XDP_PASS, cut
        assert out.data == raw[:cut], cut
    counted = sum(reasons(maps).values()) - before
    assert counted == len(raw) - 14


def _mutate(pkt, **fields):
    out = Ether(bytes(pkt))
    for k, v in fields.items():
        setattr(out[IP] if IP in out else out[IPv6], k, v)
    return out


def _v6(*ext) -> Ether:
    """A UDP datagram to the IPv6 NodePort behind these extension headers."""
    l3 = IPv6(src=CLIENT6, dst=NODE6)
    for e in ext:
        l3 = l3 / e
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / l3 / UDP(sport=47000, dport=30053) / b"hi"


# RFC 8200 4: headers a node walks to find the upper layer; the rewrite leaves them be
EXTENSION_CASES = [
    ("hop-by-hop", _v6(IPv6ExtHdrHopByHop())),
    ("destination options (padded to 16 bytes)",
     _v6(IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 10)]))),
    ("hop-by-hop, destination options, routing done (segments left 0)",
     _v6(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(segleft=0))),
    ("an atomic fragment (RFC 6946: offset 0, no more fragments)", _v6(IPv6ExtHdrFragment(id=9))),
    ("IPv4 first fragment (MF): a datagram's first part carries its ports",
     Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT4, dst=NODE4, flags="MF")
     / TCP(sport=47001, dport=30080, flags="S")),
]  # fmt: skip


@pytest.mark.parametrize("description,pkt", EXTENSION_CASES, ids=[c[0] for c in EXTENSION_CASES])
def test_extension_headers_are_walked_to_the_transport(run, description, pkt):
    out = run(pkt)
    assert out.retval == XDP_PASS, description
    l3 = IPv6 if IPv6 in pkt else IP
    l4 = UDP if UDP in pkt else TCP
    backend = {30053: "fd00:10:244:1::6", 30080: "10.244.1.5"}[pkt[l4].dport]
    port = {30053: 5353, 30080: 8080}[pkt[l4].dport]
    expected = rewritten(pkt, dst=backend, dport=port)
    assert Ether(out.data) == expected, description
    assert checksums_valid(out.data) and Ether(out.data)[l3].dst == backend


MALFORMED = [
    ("IPv4 later fragment, its first never seen", _mutate(GOOD[1], frag=100), "pass_fragment"),
    ("IHL below 5", bytes(GOOD[0])[:14] + bytes([0x44]) + bytes(GOOD[0])[15:], "pass_bad_ip"),
    ("total length beyond the frame", _mutate(GOOD[0], len=200), "pass_bad_ip"),
    ("total length shorter than the header", _mutate(GOOD[0], len=10), "pass_bad_ip"),
    ("IP version 5", bytes(GOOD[0])[:14] + bytes([0x55]) + bytes(GOOD[0])[15:], "pass_bad_ip"),
    ("IPv6 payload length beyond the frame", _mutate(GOOD[2], plen=500), "pass_bad_ip"),
    (
        "IPv6 later fragment, its first never seen",
        Ether(src=CLIENT_MAC, dst=NODE_MAC)
        / IPv6(src=CLIENT6, dst=NODE6)
        / IPv6ExtHdrFragment(offset=100, id=7)
        / (b"x" * 16),
        "pass_fragment",
    ),
    (
        "IPv6 routing header with segments left: not the destination yet",
        _v6(IPv6ExtHdrRouting(addresses=["2001:db8::99"], segleft=1)),
        "pass_ipv6_ext",
    ),
    (
        "IPv6 AH: it signs the addresses a rewrite changes",
        _v6(AH(spi=1, icv=b"\0" * 12)),
        "pass_ipv6_ext",
    ),
    (
        "IPv6, five extension headers (four are walked)",
        _v6(*[IPv6ExtHdrDestOpt() for _ in range(5)]),
        "pass_ipv6_ext",
    ),
    (
        "VLAN tagged",
        Ether(src=CLIENT_MAC, dst=NODE_MAC)
        / Dot1Q(vlan=5)
        / IP(src=CLIENT4, dst=NODE4)
        / TCP(dport=30080),
        "pass_vlan",
    ),
    (
        "UDP length beyond the datagram",
        Ether(bytes(GOOD[1])[:38] + b"\x00\xff" + bytes(GOOD[1])[40:]),
        "pass_bad_ip",
    ),
    (
        "TCP data offset below 5",
        Ether(bytes(GOOD[0])[:46] + b"\x40" + bytes(GOOD[0])[47:]),
        "pass_bad_ip",
    ),
    (
        "ICMP echo",
        Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT4, dst=NODE4) / ICMP(),
        "pass_not_l4",
    ),
    (
        "ARP",
        Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / (b"\x00" * 28),
        "pass_not_ip",
    ),
]


@pytest.mark.parametrize("description,pkt,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_packets_pass_untouched_and_are_counted(run, maps, description, pkt, reason):
    raw = bytes(pkt)
    before = reasons(maps)
    out = run(raw)
    assert (out.retval, out.data) == (XDP_PASS, raw), description
    assert reasons(maps)[reason] - before[reason] == 1, description


# -- terminating backends, source hash, IPv6 policies --------------------------------------------


def test_terminating_backend_keeps_its_flows_and_gets_no_new_ones(xdp, maps, syncer):
    fd = xdp.functions["xdp_lb"].fd
    a, b = local("10.244.1.21", 80), local("10.244.1.22", 80)
    syncer.sync(DesiredState(frontends=(frontend("192.168.198.30", 80, "TCP", [a]),)), NODE4, NODE6)
    first = tcp(CLIENT4, 48000, "192.168.198.30", 80)
    assert Ether(prog_test_run(fd, bytes(first)).data)[IP].dst == a.address
    # a terminates (kept draining), b takes new flows
    draining = Backend(a.address, a.port, "node-1", True, terminating=True)
    syncer.sync(
        DesiredState(frontends=(frontend("192.168.198.30", 80, "TCP", [b], draining=(draining,)),)),
        NODE4,
        NODE6,
    )
    mid_flow = tcp(CLIENT4, 48000, "192.168.198.30", 80, flags="PA", payload=b"more")
    assert Ether(prog_test_run(fd, bytes(mid_flow)).data)[IP].dst == a.address
    for sport in range(48001, 48021):
        new = tcp(CLIENT4, sport, "192.168.198.30", 80)
        assert Ether(prog_test_run(fd, bytes(new)).data)[IP].dst == b.address
    # a new connection that reuses the old tuple is not kept on the terminating backend
    assert Ether(prog_test_run(fd, bytes(first)).data)[IP].dst == b.address


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_an_unready_backend_keeps_its_tcp_flows_its_udp_flows_move_and_it_gets_no_new_ones(
    xdp, maps, syncer, proto
):
    """kube-proxy leaves established connections alone when their endpoint turns unready
    (its conntrack entries stay), and deletes the UDP ones of an endpoint that stopped
    serving: a TCP client keeps talking to its pod through a readiness blip; a UDP one
    moves on (before, both moved: a TCP reset for the client)."""
    fd = xdp.functions["xdp_lb"].fd
    packet = tcp if proto == "TCP" else udp
    a, b = local("10.244.1.23", 80), local("10.244.1.24", 80)
    syncer.sync(DesiredState(frontends=(frontend("192.168.198.32", 80, proto, [a]),)), NODE4, NODE6)
    first = packet(CLIENT4, 48100, "192.168.198.32", 80)
    assert Ether(prog_test_run(fd, bytes(first)).data)[IP].dst == a.address
    unready = dataclasses.replace(a, ready=False, serving=False)
    syncer.sync(
        DesiredState(frontends=(frontend("192.168.198.32", 80, proto, [b], draining=(unready,)),)),
        NODE4,
        NODE6,
    )
    more = (
        tcp(CLIENT4, 48100, "192.168.198.32", 80, flags="PA", payload=b"more")
        if proto == "TCP"
        else udp(CLIENT4, 48100, "192.168.198.32", 80, payload=b"more")
    )
    expect = a.address if proto == "TCP" else b.address
    assert Ether(prog_test_run(fd, bytes(more)).data)[IP].dst == expect
    for sport in range(48101, 48121):  # new flows: never to the unready one
        new = packet(CLIENT4, sport, "192.168.198.32", 80)
        assert Ether(prog_test_run(fd, bytes(new)).data)[IP].dst == b.address


def test_source_hash_keeps_a_client_without_affinity_state(xdp, maps, syncer):
    fd = xdp.functions["xdp_lb"].fd
    backends = [local(f"10.244.1.{i}", 80) for i in range(30, 36)]
    syncer.sync(
        DesiredState(
            frontends=(
                frontend("192.168.198.31", 80, "TCP", backends, algorithm=Algorithm.SOURCE_HASH),
            )
        ),
        NODE4,
        NODE6,
    )
    for client in ("203.0.113.50", "203.0.113.51", "203.0.113.52"):
        seen = {
            Ether(prog_test_run(fd, bytes(tcp(client, sport, "192.168.198.31", 80))).data)[IP].dst
            for sport in range(49000, 49010)
        }
        assert len(seen) == 1
    assert maps.affinity.items() == []  # no per-client state was needed


def test_ipv6_affinity_and_source_ranges(xdp, maps, syncer):
    fd = xdp.functions["xdp_lb"].fd
    backends = [local(f"fd00:10:244:1::{i}", 80) for i in (40, 41, 42)]
    syncer.sync(
        DesiredState(
            frontends=(
                frontend(
                    "fd00:198::40",
                    80,
                    "TCP",
                    backends,
                    algorithm=Algorithm.RANDOM,
                    affinity_timeout=60,
                    kind=FrontendKind.LOAD_BALANCER,
                    source_ranges=("2001:db8::/64",),
                ),
            )
        ),
        NODE4,
        NODE6,
    )
    seen = {
        Ether(prog_test_run(fd, bytes(tcp(CLIENT6, sport, "fd00:198::40", 80))).data)[IPv6].dst
        for sport in range(49100, 49120)
    }
    assert len(seen) == 1
    outsider = prog_test_run(fd, bytes(tcp("2001:db9::1", 1, "fd00:198::40", 80)))
    assert outsider.retval == XDP_DROP
