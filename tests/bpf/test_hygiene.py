"""L2 and address hygiene, as the RFCs and the kernel's own checks have it: frames xdp_lb must
neither answer nor balance nor reject, each passed to the stack byte for byte and counted.
Every table has a row that is answered, so that a table which passes by answering nothing
cannot pass. (description, frame, what xdp_lb does, the reason counted)"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from controlplane.model.state import DesiredState
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, tcp, udp
from tests.bpf.test_neighbour import OWNED4, OWNED6, UPLINK_MAC
from tests.bpf.test_xdp_forward import lan  # noqa: F401 (a fixture)
from tests.bpf.test_xdp_lb import (
    CLIENT4,
    CLIENT6,
    NODE4,
    NODE6,
    STATE,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    frontend,
)

ASKER6 = "fd00:198::100"
SOLICITED = "ff02::1:ff00:f0"  # OWNED6's solicited-node group
SOLICITED_MAC = "33:33:ff:00:00:f0"


@pytest.fixture
def run(xdp, maps, syncer):
    from controlplane.datapath.syscall import prog_test_run

    state = DesiredState(
        frontends=(*STATE.frontends, frontend(NODE4, 30999, "TCP", []))  # no backend: rejects
    )
    syncer.sync(state, NODE4, NODE6, UPLINK_MAC)
    syncer.sync_lb_ips({OWNED4, OWNED6})
    syncer.heartbeat()
    fd = xdp.functions["xdp_lb"].fd
    yield lambda pkt: prog_test_run(fd, bytes(pkt))
    syncer.sync_lb_ips(set())


def arp(src_mac: str = CLIENT_MAC, hwsrc: str = CLIENT_MAC, ethertype: int = 0x0806) -> Ether:
    return Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff", type=ethertype) / ARP(
        op=1, hwsrc=hwsrc, psrc="192.168.198.100", pdst=OWNED4
    )


def ns(src: str = ASKER6, dst: str = SOLICITED, hlim: int = 255, option: bytes | None = None,
       code: int = 0, chksum: int | None = None, mac: str = CLIENT_MAC) -> Ether:  # fmt: skip
    icmp = ICMPv6ND_NS(tgt=OWNED6, code=code)
    if chksum is not None:
        icmp.cksum = chksum
    pkt = Ether(src=mac, dst=SOLICITED_MAC) / IPv6(src=src, dst=dst, hlim=hlim) / icmp
    if option is None:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    elif option:
        pkt = pkt / option
    return Ether(bytes(pkt))


NEIGHBOURS = [
    ("an ARP request (the control)", arp(), XDP_TX),
    ("ARP bytes in an LLDP frame", arp(ethertype=0x88CC), XDP_PASS),
    ("an ARP request from a group source MAC", arp(src_mac="01:00:5e:00:00:01"), XDP_PASS),
    ("an ARP request whose sender hardware address is a group", arp(hwsrc="ff:ff:ff:ff:ff:ff"),
     XDP_PASS),
    ("a solicitation (the control)", ns(), XDP_TX),
    ("duplicate detection: from :: to the solicited-node group", ns(src="::", option=b""),
     XDP_TX),
    ("hop limit 64: it crossed a router (RFC 4861 7.1.1)", ns(hlim=64), XDP_PASS),
    ("code 1", ns(code=1), XDP_PASS),
    ("a bad checksum", ns(chksum=0x1234), XDP_PASS),
    ("an option of length 0", ns(option=b"\x01\x00" + bytes(6)), XDP_PASS),
    ("from :: to a unicast address", ns(src="::", dst=OWNED6, option=b""), XDP_PASS),
    ("from :: with a source link-layer address", ns(src="::"), XDP_PASS),
    ("from :: to another solicited-node group", ns(src="::", dst="ff02::1:ff00:f1", option=b""),
     XDP_PASS),
    ("from a group source MAC", ns(mac="33:33:00:00:00:01"), XDP_PASS),
]  # fmt: skip


@pytest.mark.parametrize("description,pkt,verdict", NEIGHBOURS, ids=[r[0] for r in NEIGHBOURS])
def test_only_well_formed_requests_are_answered(run, description, pkt, verdict):
    out = run(pkt)
    assert out.retval == verdict
    if verdict == XDP_PASS:
        assert out.data == bytes(pkt)


def syn(src: str, dst: str, dport: int = 30080, src_mac: str = CLIENT_MAC,
        dst_mac: str = NODE_MAC) -> Ether:  # fmt: skip
    pkt = tcp(src, 40000, dst, dport, flags="S")
    pkt[Ether].src, pkt[Ether].dst = src_mac, dst_mac
    return Ether(bytes(pkt))


MARTIANS = [
    ("a client's SYN (the control)", syn(CLIENT4, NODE4), None),
    ("from 127.0.0.1", syn("127.0.0.1", NODE4), "pass_martian"),
    ("from 0.0.0.0", syn("0.0.0.0", NODE4), "pass_martian"),
    ("from a multicast address", syn("224.0.0.9", NODE4), "pass_martian"),
    ("from the broadcast address", syn("255.255.255.255", NODE4), "pass_martian"),
    ("from class E", syn("240.0.0.1", NODE4), "pass_martian"),
    ("in a broadcast frame", syn(CLIENT4, NODE4, dst_mac="ff:ff:ff:ff:ff:ff"), "pass_martian"),
    ("from a group source MAC", syn(CLIENT4, NODE4, src_mac="01:00:5e:00:00:09"), "pass_martian"),
    ("to a frontend without backends, from a multicast source: no RST to it",
     syn("224.0.0.9", NODE4, 30999), "pass_martian"),
    ("IPv6 from ::1", syn("::1", NODE6), "pass_martian"),
    ("IPv6 from a multicast address", syn("ff02::1", NODE6), "pass_martian"),
    ("IPv6 from ::", syn("::", NODE6), "pass_martian"),
    ("IPv6 from an IPv4-mapped address", syn("::ffff:192.168.198.100", NODE6), "pass_martian"),
    ("IPv6 to the node's NodePort in IPv4-mapped form: never the IPv4 Service",
     syn(CLIENT6, f"::ffff:{NODE4}"), "pass_martian"),
]  # fmt: skip


@pytest.mark.parametrize("description,pkt,reason", MARTIANS, ids=[r[0] for r in MARTIANS])
def test_martian_and_group_traffic_is_never_balanced(run, maps, description, pkt, reason):
    before = maps.reason_counts()
    out = run(pkt)
    if reason is None:
        assert out.retval == XDP_PASS and Ether(out.data)[IP].dst != NODE4  # balanced: DNAT
        return
    assert (out.retval, out.data) == (XDP_PASS, bytes(pkt))
    assert maps.reason_counts()[reason] - before[reason] == 1
    assert not maps.ct.items() and not maps.ct_new.items()  # nothing tracked either


def test_an_ipv4_mapped_packet_never_touches_an_ipv4_flow(run, maps):
    """The IPv4 flow's entries are keyed by IPv4-mapped addresses: an IPv6 packet spelling the
    same addresses must not hit them (it used to be rewritten by them)."""
    first = run(syn(CLIENT4, NODE4))
    assert Ether(first.data)[IP].dst != NODE4

    def entries():
        return {bytes(k): bytes(v) for t in (maps.ct, maps.ct_new) for k, v in t.items()}

    before = entries()
    mapped = (
        Ether(src=CLIENT_MAC, dst=NODE_MAC)
        / IPv6(src=f"::ffff:{CLIENT4}", dst=f"::ffff:{NODE4}")
        / TCP(sport=40000, dport=30080, flags="A")
    )
    out = run(mapped)
    assert (out.retval, out.data) == (XDP_PASS, bytes(mapped))
    assert entries() == before


def test_frames_to_another_hosts_mac_are_neither_balanced_nor_answered(xdp, maps, syncer, lan):  # noqa: F811
    """On a promiscuous port (a bridge member, a mirror) frames to other MACs reach XDP; the
    stack drops them (PACKET_OTHERHOST), and so must xlb: no new flow, no ARP or neighbour
    answer. Frames to the device's own MAC and to group addresses are the controls."""
    from controlplane.datapath.syscall import prog_test_run

    _, ifindex, up_mac = lan
    syncer.sync(STATE, NODE4, NODE6, UPLINK_MAC)
    syncer.sync_devices({ifindex: up_mac})
    syncer.sync_lb_ips({OWNED4, OWNED6})
    syncer.heartbeat()
    fd = xdp.functions["xdp_lb"].fd
    other = "02:00:00:00:99:99"
    try:

        def go(pkt):
            return prog_test_run(fd, bytes(pkt), ifindex=ifindex)

        before = maps.reason_counts()
        stray = syn(CLIENT4, NODE4, dst_mac=other)
        out = go(stray)
        assert (out.retval, out.data) == (XDP_PASS, bytes(stray))
        assert maps.reason_counts()["pass_other_host"] - before["pass_other_host"] == 1
        assert not maps.ct_new.items()
        ours = go(syn(CLIENT4, NODE4, dst_mac=up_mac))
        assert ours.retval == XDP_PASS and Ether(ours.data)[IP].dst != NODE4  # balanced

        unicast_arp = arp()
        unicast_arp[Ether].dst = other
        assert go(unicast_arp).retval == XDP_PASS
        unicast_arp[Ether].dst = up_mac
        assert go(unicast_arp).retval == XDP_TX  # a unicast ARP request to us (RFC 1122)
        solicit = ns()
        solicit[Ether].dst = other
        assert go(solicit).retval == XDP_PASS
        assert go(ns()).retval == XDP_TX
    finally:
        syncer.sync_devices({})
        syncer.sync_lb_ips(set())


def _bad(pkt: Ether, delta: int = 1) -> Ether:
    """pkt with its L4 checksum off by delta."""
    out = Ether(bytes(pkt))
    l4 = out[TCP] if TCP in out else out[UDP]
    l4.chksum = (l4.chksum + delta) & 0xFFFF or 1
    return Ether(bytes(out))


def _partial(pkt: Ether) -> Ether:
    """pkt as a local sender's kernel leaves it (CHECKSUM_PARTIAL): the checksum field holds
    the pseudo-header's folded sum only, as a veth hands it to XDP."""
    import socket
    import struct

    out = Ether(bytes(pkt))
    l3 = out[IPv6] if IPv6 in out else out[IP]
    l4 = out[TCP] if TCP in out else out[UDP]
    size = len(bytes(l4))
    fam = socket.AF_INET6 if IPv6 in out else socket.AF_INET
    proto = 6 if TCP in out else 17
    ph = socket.inet_pton(fam, l3.src) + socket.inet_pton(fam, l3.dst)
    ph += struct.pack("!BBH", 0, proto, size) if fam == socket.AF_INET else struct.pack(
        "!I3xB", size, proto)  # fmt: skip
    s = sum(struct.unpack(f"!{len(ph) // 2}H", ph))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    l4.chksum = s
    return Ether(bytes(out))


CHECKSUMS = [
    ("a SYN with its checksum right (the control)", tcp(CLIENT4, 41000, NODE4, 30080), "pass"),
    ("a SYN with a wrong checksum", _bad(tcp(CLIENT4, 41001, NODE4, 30080)), "drop"),
    ("a SYN in CHECKSUM_PARTIAL form (a local sender over a veth)",
     _partial(tcp(CLIENT4, 41002, NODE4, 30080)), "pass"),
    ("an IPv6 SYN with a wrong checksum", _bad(tcp(CLIENT6, 41003, NODE6, 30080)), "drop"),
    ("an IPv6 SYN in CHECKSUM_PARTIAL form", _partial(tcp(CLIENT6, 41004, NODE6, 30080)), "pass"),
    ("a UDP datagram with a wrong checksum", _bad(udp(CLIENT4, 41005, NODE4, 30053)), "drop"),
    ("an IPv4 UDP datagram without a checksum (0)",
     Ether(bytes(udp(CLIENT4, 41006, NODE4, 30053))[:40] + b"\0\0"
           + bytes(udp(CLIENT4, 41006, NODE4, 30053))[42:]), "pass"),
    ("a 1400-byte datagram, right", udp(CLIENT4, 41007, NODE4, 30053, payload=bytes(range(256)) * 5
                                        + b"x" * 120), "pass"),
    ("a 1401-byte datagram (odd), right", udp(CLIENT6, 41008, NODE6, 30053,
                                              payload=b"y" * 1401), "pass"),
    ("a 1401-byte datagram, one payload bit flipped",
     Ether(bytes(udp(CLIENT6, 41009, NODE6, 30053, payload=b"y" * 1401))[:-1] + b"z"), "drop"),
    ("to a frontend without endpoints, wrong: no RST for it",
     _bad(tcp(CLIENT4, 41010, NODE4, 30999)), "drop"),
]  # fmt: skip


@pytest.mark.parametrize("description,pkt,verdict", CHECKSUMS, ids=[c[0] for c in CHECKSUMS])
def test_a_bad_checksum_starts_no_flow_and_gets_no_answer(run, maps, description, pkt, verdict):
    before = maps.reason_counts()["drop_bad_csum"]
    out = run(pkt)
    if verdict == "drop":
        assert out.retval == XDP_DROP, description
        assert maps.reason_counts()["drop_bad_csum"] - before == 1
        assert not maps.ct_new.items()
    else:
        l3 = IPv6 if IPv6 in pkt else IP
        assert out.retval == XDP_PASS and Ether(out.data)[l3].dst != pkt[l3].dst, description
