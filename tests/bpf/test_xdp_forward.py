"""Remote backends: DNAT + SNAT to the node address, FIB lookup, XDP_TX; and the backend's
reply translated back to the client. Runs inside a namespace with real routes and neighbours,
because bpf_fib_lookup consults them."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import Backend, DesiredState
from tests.bpf.packets import CLIENT_MAC, checksums_valid, tcp, udp
from tests.bpf.test_xdp_lb import (
    CLIENT4,
    CLIENT6,
    NODE4,
    NODE6,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    frontend,
)
from tests.kernel import inside, netns, sh

NODE2_MAC = "02:00:00:00:00:22"
REMOTE4, REMOTE6 = "10.244.2.5", "fd00:10:244:2::5"


def remote(address: str, port: int) -> Backend:
    return Backend(address, port, "node-2", False)


STATE = DesiredState(
    frontends=(
        frontend(NODE4, 30080, "TCP", [remote(REMOTE4, 8080)]),
        frontend(NODE4, 30053, "UDP", [remote(REMOTE4, 5353)]),
        frontend(NODE6, 30080, "TCP", [remote(REMOTE6, 8080)]),
        frontend("192.168.198.20", 80, "TCP", [remote("10.99.0.1", 80)]),  # no route there
        frontend("192.168.198.21", 80, "TCP", [remote("192.168.198.77", 80)]),  # no neighbour
    )
)


@pytest.fixture(scope="module")
def lan():
    """A node's uplink with routes to node-2's pods and to the clients, neighbours static."""
    with netns() as ns:

        def ip(*args):
            sh("ip", "-n", ns, *args)

        ip("link", "add", "up0", "type", "veth", "peer", "name", "peer0")
        for cmd in (
            ("link", "set", "up0", "up"),
            ("link", "set", "peer0", "up"),
            ("addr", "add", f"{NODE4}/24", "dev", "up0"),
            ("addr", "add", f"{NODE6}/64", "dev", "up0", "nodad"),
            *(
                ("neigh", "add", addr, "lladdr", mac, "dev", "up0", "nud", "permanent")
                for addr, mac in (
                    ("192.168.198.202", NODE2_MAC),
                    ("fd00:198::202", NODE2_MAC),
                    ("192.168.198.1", CLIENT_MAC),
                    ("fd00:198::1", CLIENT_MAC),
                )
            ),
            ("route", "add", "10.244.2.0/24", "via", "192.168.198.202"),
            ("route", "add", "fd00:10:244:2::/64", "via", "fd00:198::202"),
            ("route", "add", "203.0.113.0/24", "via", "192.168.198.1"),
            ("route", "add", "2001:db8::/64", "via", "fd00:198::1"),
        ):
            ip(*cmd)
        sh(
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        )
        with inside(ns):
            yield ns, socket.if_nametoindex("up0"), _mac(ns, "up0")


def _mac(ns: str, dev: str) -> str:
    return sh("ip", "-n", ns, "-br", "link", "show", dev).stdout.split()[2]


@pytest.fixture
def run(xdp, maps, syncer, lan):
    syncer.sync(STATE, NODE4, NODE6)
    fd = xdp.functions["xdp_lb"].fd
    _, ifindex, _ = lan
    return lambda pkt: prog_test_run(fd, bytes(pkt), ifindex=ifindex)


@pytest.mark.parametrize(
    "family,pkt,backend,bport",
    [
        (4, tcp(CLIENT4, 40000, NODE4, 30080, flags="S"), REMOTE4, 8080),
        (4, udp(CLIENT4, 40001, NODE4, 30053), REMOTE4, 5353),
        (6, tcp(CLIENT6, 40002, NODE6, 30080, flags="S"), REMOTE6, 8080),
    ],
)
def test_remote_backend_round_trip(run, lan, family, pkt, backend, bport):
    _, _, up_mac = lan
    l3, l4 = (IP, TCP if TCP in pkt else UDP) if family == 4 else (IPv6, TCP)
    node = NODE4 if family == 4 else NODE6
    out = run(pkt)
    assert out.retval == XDP_TX
    fwd = Ether(out.data)
    assert (fwd.src, fwd.dst) == (up_mac, NODE2_MAC)
    assert (fwd[l3].src, fwd[l3].dst, fwd[l4].dport) == (node, backend, bport)
    snat_port = fwd[l4].sport
    assert 49152 <= snat_port <= 65535
    assert checksums_valid(out.data)
    hops = (lambda p: p[IP].ttl) if family == 4 else (lambda p: p[IPv6].hlim)
    assert hops(fwd) == hops(pkt) - 1  # forwarding is a hop (and the checksum says so)

    # the backend answers the node; the node answers the client as the frontend
    reply = (
        Ether(src=NODE2_MAC, dst=up_mac)
        / l3(src=backend, dst=node)
        / l4(sport=bport, dport=snat_port)
        / b"reply"
    )
    if l4 is TCP:
        reply[TCP].flags = "SA"
    back = run(reply)
    assert back.retval == XDP_TX
    got = Ether(back.data)
    assert (got.src, got.dst) == (up_mac, CLIENT_MAC)
    assert (got[l3].src, got[l3].dst) == (node, pkt[l3].src)
    assert (got[l4].sport, got[l4].dport) == (pkt[l4].dport, pkt[l4].sport)
    assert checksums_valid(back.data)
    assert hops(got) == hops(reply) - 1

    # the rest of the flow keeps the same source port on the node
    again = Ether(run(pkt).data)
    assert again[l4].sport == snat_port


@pytest.mark.parametrize(
    "pkt",
    [
        tcp(CLIENT4, 40010, NODE4, 30080, flags="S", ttl=1),
        tcp(CLIENT4, 40011, NODE4, 30080, flags="S", ttl=0),
        tcp(CLIENT6, 40012, NODE6, 30080, flags="S", hlim=1),
    ],
    ids=["ttl 1", "ttl 0", "hop limit 1"],
)
def test_a_packet_out_of_hops_is_answered_time_exceeded(run, maps, pkt):
    """The kernel's ip_forward would not send it on, and answers time exceeded (RFC 1812
    5.3.1), which netfilter translates back: from the address the client sent to, quoting
    the client's own packet. So does xdp_lb; the flow is not created."""
    before = maps.reason_counts()
    out = run(pkt)
    assert out.retval == XDP_TX
    got = Ether(out.data)
    l3 = IP if IP in pkt else IPv6
    assert (got.src, got.dst) == (pkt.dst, pkt.src)
    assert (got[l3].src, got[l3].dst) == (pkt[l3].dst, pkt[l3].src)
    if l3 is IP:
        assert (got[ICMP].type, got[ICMP].code) == (11, 0)
        quote = bytes(got[ICMP].payload)
    else:
        assert isinstance(got[IPv6].payload, ICMPv6TimeExceeded)
        quote = bytes(got[ICMPv6TimeExceeded].payload)
    assert quote == bytes(pkt[l3])[: len(quote)] and len(quote) >= len(bytes(pkt[l3])[:28])
    assert checksums_valid(out.data)
    after = maps.reason_counts()
    assert after["time_exceeded"] - before["time_exceeded"] == 1
    assert not [e for e in maps.ct.items()]  # no flow for it


def test_time_exceeded_answers_are_rate_limited(xdp, maps, syncer, lan):
    """A flood of TTL-1 packets gets at most XLB_ICMP_RATE answers a second per CPU (and a
    burst as large): the rest are dropped and counted. (One test run per packet: a repeated
    run would answer its own answer.)"""
    from controlplane.datapath.constants import value

    syncer.sync(STATE, NODE4, NODE6)
    rate, runs = value("XLB_ICMP_RATE"), 5000
    _, ifindex, _ = lan
    fd = xdp.functions["xdp_lb"].fd
    pkt = tcp(CLIENT4, 40013, NODE4, 30080, flags="S", ttl=1)
    time.sleep(1.1)  # a full bucket
    before = maps.reason_counts()
    start = time.monotonic()
    raw = bytes(pkt)
    # the buckets are per CPU: a run that migrates between CPUs would fill two (seen under
    # load), so the whole flood runs on one
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        verdicts = Counter(prog_test_run(fd, raw, ifindex=ifindex).retval for _ in range(runs))
    finally:
        os.sched_setaffinity(0, cpus)
    seconds = time.monotonic() - start
    after = maps.reason_counts()
    answered = after["time_exceeded"] - before["time_exceeded"]
    limited = after["drop_icmp_rate"] - before["drop_icmp_rate"]
    print(f"{answered} answered, {limited} dropped of {runs} in {seconds * 1000:.1f} ms")
    assert (answered, limited) == (verdicts[XDP_TX], verdicts[XDP_DROP])
    assert answered + limited == runs and limited > 0
    assert rate <= answered <= rate + rate * seconds + 10


def test_two_clients_with_one_port_get_distinct_snat_ports(run):
    a = Ether(run(tcp(CLIENT4, 40500, NODE4, 30080)).data)[TCP].sport
    b = Ether(run(tcp("203.0.113.8", 40500, NODE4, 30080)).data)[TCP].sport
    assert a != b


def test_no_route_to_backend_drops_and_counts(run, maps):
    before = maps.reason_counts()["drop_fib"]
    assert run(tcp(CLIENT4, 40600, "192.168.198.20", 80)).retval == XDP_DROP
    assert maps.reason_counts()["drop_fib"] - before == 1


def test_unresolved_next_hop_goes_to_the_stack_rewritten_and_counted(run, maps):
    """XDP cannot resolve a neighbour; the stack can, so the rewritten packet is passed up to
    be forwarded (the first reply to a LAN client that only ever ARPed for the LB IP)."""
    before = maps.reason_counts()
    got = run(tcp(CLIENT4, 40601, "192.168.198.21", 80, flags="S"))
    assert got.retval == XDP_PASS
    out = Ether(got.data)
    assert (out[IP].src, out[IP].dst, out[TCP].dport) == (NODE4, "192.168.198.77", 80)
    assert checksums_valid(got.data)
    after = maps.reason_counts()
    assert after["pass_no_neigh"] - before["pass_no_neigh"] == 1
    assert after["drop_fib"] == before["drop_fib"]


def test_snat_ports_of_closed_flows_are_reused_and_never_run_out(run, maps, dp_config):
    """Short connections to one remote backend, as a busy client makes them (each answered,
    established and closed by a FIN each way), over twice as many as there are SNAT ports:
    no new flow may find every candidate port taken. Between rounds of 96 time passes (the
    entries' stamps moved back by each one's own timeout): the closed flows' ports are free
    again, and taken again, as the later rounds must (576 flows, 256 ports)."""
    import dataclasses
    import socket as so

    from controlplane.datapath import conntrack
    from controlplane.datapath.sync import Syncer

    lo, hi = 60000, 60255  # 256 ports, in the config map: no other compile needed
    small = dataclasses.replace(dp_config, snat_ports=(lo, hi))
    Syncer(maps, small).sync(STATE, NODE4, NODE6)
    try:
        before = maps.reason_counts()["drop_snat_exhausted"]
        rounds: list[set[int]] = []
        for r in range(6):
            used = set()
            for i in range(96):
                # (clients where the node's routes lead: the replies go back to them)
                client, sport = f"203.0.113.{i + 1}", 20000 + 1000 * r + i
                out = run(tcp(client, sport, NODE4, 30080))
                assert out.retval == XDP_TX, (r, i)
                port = Ether(out.data)[TCP].sport
                used.add(port)
                # a whole connection: answered, established, a FIN each way (closed)
                for side, flags in (("b", "SA"), ("c", "A"), ("c", "FA"), ("b", "FA"), ("c", "A")):
                    if side == "c":
                        out = run(tcp(client, sport, NODE4, 30080, flags=flags))
                    else:
                        out = run(tcp(REMOTE4, 8080, NODE4, port, flags=flags))
                    assert out.retval == XDP_TX, (r, i, side, flags)
            rounds.append(used)
            for table in (maps.ct, maps.ct_new):  # each entry's own timeout passes
                for k, v in table.items():
                    t = conntrack.timeout(
                        v.flags, v.state, v.seen, so.IPPROTO_TCP, small.ct_timeouts
                    )
                    v.stamp -= (t + 1) * conntrack.NS
                    table[k] = v
        again = len(rounds[-1] & set().union(*rounds[:-1]))
        print(f"SNAT ports of the last round's 96 flows that earlier flows had used: {again}")
        assert maps.reason_counts()["drop_snat_exhausted"] - before == 0
        assert all(len(u) == 96 and min(u) >= lo and max(u) <= hi for u in rounds)
        assert len(set().union(*rounds)) <= 256 < 6 * 96  # so ports were taken again
    finally:
        Syncer(maps, dp_config).sync(STATE, NODE4, NODE6)  # the module's config again


def test_a_changed_next_hop_is_followed_once_the_fib_cache_entry_ages(run, lan):
    """FIB answers are cached per CPU for 100 ms: a neighbour that changes its MAC (or a route
    that goes) is followed by the first packet after that."""
    import time

    ns, _, _ = lan
    pkt = udp(CLIENT4, 40700, NODE4, 30053)
    assert Ether(run(pkt).data).dst == NODE2_MAC
    moved = "02:00:00:00:00:33"
    sh("ip", "-n", ns, "neigh", "replace", "192.168.198.202", "lladdr", moved, "dev", "up0")
    try:
        time.sleep(0.15)
        assert Ether(run(pkt).data).dst == moved
        sh("ip", "-n", ns, "route", "del", "10.244.2.0/24")
        time.sleep(0.15)
        assert run(pkt).retval == XDP_DROP  # no route any more
    finally:
        sh("ip", "-n", ns, "route", "replace", "10.244.2.0/24", "via", "192.168.198.202")
        sh("ip", "-n", ns, "neigh", "replace", "192.168.198.202", "lladdr", NODE2_MAC, "dev", "up0")
        sh("ip", "-n", ns, "neigh", "change", "192.168.198.202", "dev", "up0", "nud", "permanent")
    time.sleep(0.15)
    assert Ether(run(pkt).data).dst == NODE2_MAC


def test_with_policy_routing_the_fib_is_asked_for_every_packet(run, lan, syncer):
    """A rule can route by source, ports or marks, which a cache by destination would not
    see: the agent counts the rules beyond the kernel's own and switches the cache off."""
    from controlplane.datapath.node import policy_rules

    ns, _, _ = lan
    pkt = udp(CLIENT4, 40800, NODE4, 30053)
    with inside(ns):
        assert policy_rules() == 0
    # SNATed flows from this node to node-2's pods leave by another next hop (table 100)
    sh("ip", "-n", ns, "route", "add", "10.244.2.0/24", "via", "192.168.198.1", "table", "100")
    try:
        assert Ether(run(pkt).data).dst == NODE2_MAC  # and cached for the next 100 ms
        sh("ip", "-n", ns, "rule", "add", "from", NODE4, "lookup", "100", "priority", "100")
        with inside(ns):
            assert policy_rules() == 1
        syncer.sync(STATE, NODE4, NODE6, fib_cache=False)
        assert Ether(run(pkt).data).dst == CLIENT_MAC  # the rule's answer, not the cache's
    finally:
        sh("ip", "-n", ns, "rule", "del", "priority", "100", check=False)
        sh("ip", "-n", ns, "route", "flush", "table", "100")
        syncer.sync(STATE, NODE4, NODE6)
    assert Ether(run(pkt).data).dst == NODE2_MAC
