"""xdp_lb answers ARP and neighbour solicitations for the LoadBalancer IPs this node owns,
and nothing else."""

from __future__ import annotations

import pytest
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import DesiredState
from tests.bpf.packets import CLIENT_MAC, checksums_valid
from tests.bpf.test_xdp_lb import NODE4, NODE6, XDP_PASS, XDP_TX

UPLINK_MAC = "02:00:00:00:aa:01"
OWNED4, OWNED6 = "192.168.198.240", "fd00:198::f0"


@pytest.fixture
def run(xdp, maps, syncer):
    syncer.sync(DesiredState(), NODE4, NODE6, UPLINK_MAC)
    syncer.sync_lb_ips({OWNED4, OWNED6})
    syncer.heartbeat()
    fd = xdp.functions["xdp_lb"].fd
    yield lambda pkt: prog_test_run(fd, bytes(pkt))
    syncer.sync_lb_ips(set())


def arp_request(target: str, op: int = 1) -> Ether:
    return Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=op, hwsrc=CLIENT_MAC, psrc="192.168.198.100", pdst=target
    )


def test_arp_request_for_an_owned_ip_is_answered(run, maps):
    before = maps.reason_counts()["neighbour_reply"]
    out = run(arp_request(OWNED4))
    assert out.retval == XDP_TX
    reply = Ether(out.data)
    assert (reply.src, reply.dst) == (UPLINK_MAC, CLIENT_MAC)
    assert reply[ARP].op == 2 and reply[ARP].hwsrc == UPLINK_MAC
    assert (reply[ARP].psrc, reply[ARP].pdst) == (OWNED4, "192.168.198.100")
    assert reply[ARP].hwdst == CLIENT_MAC
    assert maps.reason_counts()["neighbour_reply"] - before == 1


@pytest.mark.parametrize(
    "pkt",
    [arp_request("192.168.198.241"), arp_request(OWNED4, op=2)],
    ids=["not ours", "a reply, not a request"],
)
def test_other_arp_passes_untouched(run, pkt):
    out = run(pkt)
    assert (out.retval, out.data) == (XDP_PASS, bytes(pkt))


def test_after_losing_the_ip_the_node_stays_silent(run, syncer):
    syncer.sync_lb_ips({OWNED6})
    assert run(arp_request(OWNED4)).retval == XDP_PASS


def test_a_node_whose_agent_fell_silent_stops_answering(run, maps):
    import ctypes as ct
    import time

    stale = time.clock_gettime_ns(6) - 2_000_000_000  # two seconds without a heartbeat
    maps.heartbeat[ct.c_uint32(0)] = ct.c_uint64(stale)
    assert run(arp_request(OWNED4)).retval == XDP_PASS


def test_status_shows_what_this_node_announces_and_whether_it_answers(run, maps):
    import ctypes as ct
    import time

    from controlplane.datapath.status import announcing, announcing_line

    now = announcing(maps)
    assert now["addresses"] == sorted([OWNED4, OWNED6]) and now["answering"]
    assert announcing_line(now).endswith("(answering)")
    stale = time.clock_gettime_ns(6) - 5_000_000_000
    maps.heartbeat[ct.c_uint32(0)] = ct.c_uint64(stale)
    later = announcing(maps)
    assert not later["answering"] and later["heartbeatAge"] >= 5.0
    assert "heartbeat is 5." in announcing_line(later)


@pytest.mark.parametrize("source", ["fd00:198::100", "::"])
def test_neighbour_solicitation_for_an_owned_ip_is_answered(run, source):
    ns = (
        Ether(src=CLIENT_MAC, dst="33:33:ff:00:00:f0")
        / IPv6(src=source, dst="ff02::1:ff00:f0", hlim=255)
        / ICMPv6ND_NS(tgt=OWNED6)
    )
    if source != "::":
        ns = ns / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    out = run(Ether(bytes(ns)))
    assert out.retval == XDP_TX
    na = Ether(out.data)
    assert na.src == UPLINK_MAC and na[IPv6].src == OWNED6 and na[IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == OWNED6 and na[ICMPv6NDOptDstLLAddr].lladdr == UPLINK_MAC
    if source == "::":  # duplicate address detection: to all nodes, not solicited
        assert na[IPv6].dst == "ff02::1" and na[ICMPv6ND_NA].S == 0
    else:
        assert na[IPv6].dst == source and na.dst == CLIENT_MAC and na[ICMPv6ND_NA].S == 1
    assert checksums_valid(out.data)


def test_solicitation_for_another_address_passes(run):
    ns = (
        Ether(src=CLIENT_MAC)
        / IPv6(src="fd00:198::100", dst="ff02::1:ff00:1")
        / ICMPv6ND_NS(tgt="fd00:198::1")
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    )
    out = run(ns)
    assert (out.retval, out.data) == (XDP_PASS, bytes(ns))
