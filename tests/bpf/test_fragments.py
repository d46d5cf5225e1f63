"""Fragmented datagrams through xdp_lb and tc_lb: every fragment of a datagram goes where its
first went (its ports are only in the first), both directions, IPv4 and IPv6, local and
remote backends. Fragments are cut by scapy and the outputs reassembled by scapy: the
datagram that arrives must be the one sent, translated, with a valid checksum."""

from __future__ import annotations

from collections import Counter

import pytest
from scapy.layers.inet import IP, UDP, defragment, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6, fragment6
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import DesiredState
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, checksums_valid
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
LOCAL4, LOCAL6 = "10.244.1.6", "fd00:10:244:1::6"
STATE = DesiredState(
    frontends=(
        frontend(NODE4, 30053, "UDP", [local(LOCAL4, 5353)]),
        frontend(NODE6, 30053, "UDP", [local(LOCAL6, 5353)]),
        frontend(NODE4, 30054, "UDP", [remote(REMOTE4, 5353)]),
        frontend(NODE6, 30054, "UDP", [remote(REMOTE6, 5353)]),
        frontend(NODE4, 30055, "UDP"),  # no endpoints
    )
)
PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: three fragments at an MTU of 1500


@pytest.fixture
def progs(xdp, tc, maps, syncer, lan):  # noqa: F811
    syncer.sync(STATE, NODE4, NODE6)
    _, ifindex, up_mac = lan
    xdp_fd, tc_fd = xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd

    def through_xdp(frames):
        return [prog_test_run(xdp_fd, bytes(f), ifindex=ifindex) for f in frames]

    def through_tc(frames):
        return [prog_test_run(tc_fd, bytes(f)) for f in frames]

    return through_xdp, through_tc, up_mac


def datagram(src: str, sport: int, dst: str, dport: int, ident: int, src_mac=CLIENT_MAC,
             dst_mac=NODE_MAC) -> list[Ether]:  # fmt: skip
    """A 3072-byte UDP datagram in fragments of at most 1500 bytes, as a sender cuts it."""
    eth = Ether(src=src_mac, dst=dst_mac)
    if ":" in dst:
        pkt = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=ident) / UDP(sport=sport, dport=dport)
        return [eth / f for f in fragment6(pkt / PAYLOAD, 1500)]  # fmt: skip
    pkt = IP(src=src, dst=dst, id=ident) / UDP(sport=sport, dport=dport) / PAYLOAD
    return [eth / f for f in fragment(pkt, fragsize=1480)]


def reassembled(outputs) -> Ether:
    """The datagram the receiver puts together from the outputs (scapy's reassembly)."""
    frames = [Ether(o.data) for o in outputs]
    if IPv6 in frames[0]:
        whole = defragment6([f[IPv6] for f in frames])
        return Ether(src=frames[0].src, dst=frames[0].dst) / IPv6(bytes(whole))
    (whole,) = defragment([f[IP] for f in frames])
    return Ether(src=frames[0].src, dst=frames[0].dst) / whole


def l3(pkt):
    return pkt[IPv6] if IPv6 in pkt else pkt[IP]


LOCALS = [(CLIENT4, NODE4, LOCAL4), (CLIENT6, NODE6, LOCAL6)]
REMOTES = [(CLIENT4, NODE4, REMOTE4), (CLIENT6, NODE6, REMOTE6)]


@pytest.mark.parametrize("client,node,backend", LOCALS)
def test_a_fragmented_datagram_to_a_local_backend_and_its_fragmented_reply(progs, client, node,
                                                                          backend):  # fmt: skip
    through_xdp, through_tc, _ = progs
    frames = datagram(client, 41000, node, 30053, 0x4242)
    assert len(frames) == 3
    outs = through_xdp(frames)
    assert [o.retval for o in outs] == [XDP_PASS] * 3
    got = reassembled(outs)
    assert (l3(got).src, l3(got).dst, got[UDP].sport, got[UDP].dport) == (client, backend, 41000,
                                                                          5353)  # fmt: skip
    assert bytes(got[UDP].payload) == PAYLOAD and checksums_valid(bytes(got))

    # the backend answers with a datagram as large, cut by its own stack
    reply = datagram(backend, 5353, client, 41000, 0x5151, src_mac=NODE_MAC, dst_mac=CLIENT_MAC)
    outs = through_tc(reply)
    assert [o.retval for o in outs] == [TC_NEXT] * 3
    assert all(l3(Ether(o.data)).src == node for o in outs)  # every fragment, not the first
    back = reassembled(outs)
    assert (l3(back).src, back[UDP].sport, l3(back).dst, back[UDP].dport) == (node, 30053, client,
                                                                              41000)  # fmt: skip
    assert bytes(back[UDP].payload) == PAYLOAD and checksums_valid(bytes(back))


@pytest.mark.parametrize("client,node,backend", REMOTES)
def test_a_fragmented_datagram_to_a_remote_backend_and_its_fragmented_reply(progs, client, node,
                                                                           backend):  # fmt: skip
    through_xdp, _, up_mac = progs
    outs = through_xdp(datagram(client, 41100, node, 30054, 0x4343))
    assert [o.retval for o in outs] == [XDP_TX] * 3
    assert all(Ether(o.data).dst == NODE2_MAC and l3(Ether(o.data)).dst == backend for o in outs)
    got = reassembled(outs)
    assert (l3(got).src, l3(got).dst, got[UDP].dport) == (node, backend, 5353)
    snat_port = got[UDP].sport
    assert bytes(got[UDP].payload) == PAYLOAD and checksums_valid(bytes(got))

    reply = datagram(backend, 5353, node, snat_port, 0x5252, src_mac=NODE2_MAC, dst_mac=up_mac)
    outs = through_xdp(reply)
    assert [o.retval for o in outs] == [XDP_TX] * 3
    back = reassembled(outs)
    assert (l3(back).src, back[UDP].sport, l3(back).dst, back[UDP].dport) == (node, 30054, client,
                                                                              41100)  # fmt: skip
    assert bytes(back[UDP].payload) == PAYLOAD and checksums_valid(bytes(back))


def test_a_later_fragment_whose_first_was_not_seen_is_left_to_the_stack(progs, maps):
    through_xdp, _, _ = progs
    before = Counter(maps.reason_counts())
    for client, node in ((CLIENT4, NODE4), (CLIENT6, NODE6)):
        frames = datagram(client, 41200, node, 30053, 0x4444)[1:]  # the first one lost
        outs = through_xdp(frames)
        assert [(o.retval, o.data) for o in outs] == [(XDP_PASS, bytes(f)) for f in frames]
    assert Counter(maps.reason_counts())["pass_fragment"] - before["pass_fragment"] == 4


def test_fragments_of_two_datagrams_with_one_id_from_two_clients_stay_apart(progs):
    through_xdp, _, _ = progs
    first = datagram(CLIENT4, 41300, NODE4, 30053, 0x4545)
    other = datagram("203.0.113.8", 41300, NODE4, 30054, 0x4545)  # same id, another client
    outs = through_xdp([first[0], other[0], first[1], other[1], first[2], other[2]])
    assert [o.retval for o in outs] == [XDP_PASS, XDP_TX] * 3
    assert {l3(Ether(o.data)).dst for o in outs[0::2]} == {LOCAL4}
    assert {l3(Ether(o.data)).dst for o in outs[1::2]} == {REMOTE4}


def test_a_fragmented_datagram_to_a_frontend_without_endpoints_goes_to_the_stack(progs):
    """The stack reassembles it and answers it as a host with no listener: an ICMP error
    quoting the whole datagram's header, which xdp_lb could not build from one fragment."""
    through_xdp, _, _ = progs
    frames = datagram(CLIENT4, 41400, NODE4, 30055, 0x4646)
    outs = through_xdp(frames)
    assert [(o.retval, o.data) for o in outs] == [(XDP_PASS, bytes(f)) for f in frames]
