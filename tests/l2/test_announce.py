"""Announcing taken-over addresses: the frames are what RFC 826 (gratuitous ARP) and
RFC 4861 (unsolicited neighbour advertisement) say, read back by scapy; a takeover of a whole
pool runs on one sender thread with the repeats on time."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from controlplane.l2.announce import REPEATS_AT, Announcer

MAC = "02:00:00:00:aa:01"


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.settimeout(5)
    return a, b


def test_the_frames_are_gratuitous_arp_and_unsolicited_na():
    ours, theirs = _pair()
    announcer = Announcer("test0", MAC, sock=ours)
    try:
        announcer.announce("192.168.198.240")
        request, reply = Ether(theirs.recv(2048)), Ether(theirs.recv(2048))
        for frame, op in ((request, 1), (reply, 2)):
            arp = frame[ARP]
            assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == MAC
            assert (arp.op, arp.psrc, arp.pdst, arp.hwsrc) == (op, "192.168.198.240",
                                                               "192.168.198.240", MAC)  # fmt: skip
        announcer.announce("fd00:198::f0")
        frame = Ether(theirs.recv(2048))
        while ARP in frame:  # the IPv4 address's repeats may come first
            frame = Ether(theirs.recv(2048))
        na = frame[ICMPv6ND_NA]
        assert frame[IPv6].dst == "ff02::1" and frame[IPv6].hlim == 255  # RFC 4861 7.1.2
        assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, "fd00:198::f0")  # unsolicited, override
        assert frame[ICMPv6NDOptDstLLAddr].lladdr == MAC  # the target link-layer option
        assert na.cksum == IPv6(bytes(frame[IPv6]))[ICMPv6ND_NA].cksum  # as scapy recomputes
    finally:
        announcer.close()
        theirs.close()


def test_a_pool_taken_over_at_once_is_announced_on_one_thread_on_time():
    ours, theirs = _pair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    threads = threading.active_count()
    announcer = Announcer("test0", MAC, sock=ours)
    ips = [f"10.200.{i // 250}.{i % 250 + 1}" for i in range(500)]
    seen: dict[str, list[float]] = defaultdict(list)
    try:
        start = time.monotonic()
        for ip in ips:
            announcer.announce(ip)
        assert threading.active_count() <= threads + 1  # the one sender thread
        want = len(ips) * len(REPEATS_AT) * 2
        for _ in range(want):
            frame = Ether(theirs.recv(2048))
            seen[frame[ARP].psrc].append(time.monotonic() - start)
        assert set(seen) == set(ips)
        late = max(abs(t - at) for times in seen.values()
                   for t, at in zip(times[::2], REPEATS_AT, strict=True))  # fmt: skip
        print(f"{want} frames for {len(ips)} addresses; the latest repeat {late * 1000:.0f} ms off")
        assert late < 1.0  # generous: on time, give or take a busy machine
    finally:
        announcer.close()
        theirs.close()


def test_announcing_again_restarts_the_repeats_instead_of_doubling_them():
    ours, theirs = _pair()
    announcer = Announcer("test0", MAC, sock=ours)
    try:
        announcer.announce("192.168.198.241")
        time.sleep(0.3)
        announcer.announce("192.168.198.241")
        time.sleep(REPEATS_AT[-1] + 0.5)
        theirs.setblocking(False)
        frames = 0
        while True:
            try:
                theirs.recv(2048)
            except BlockingIOError:
                break
            frames += 1
        # first schedule: 0 and 0.2 s sent before the second announce; then a full one
        assert frames == 2 * (2 + len(REPEATS_AT)), frames
    finally:
        announcer.close()
        theirs.close()


def test_an_address_let_go_gets_no_more_repeats_from_here():
    """Node-3 takes fd00:198::f4 over while node-2 is cut off and starts its repeats (0 to
    2 s); node-2 comes back 0.3 s later and takes it back. Node-3's remaining repeats must
    not go out: each would point the LAN at node-3 again, after node-2's announcements. (In
    the lab a client was left on the old holder's MAC that way, and when that node died the
    client waited out neighbour unreachability detection: 8 s.)"""
    ours, theirs = _pair()
    announcer = Announcer("test0", MAC, sock=ours)
    ip, other = "fd00:198::f4", "192.168.198.241"
    try:
        announcer.hold({ip, other})
        announcer.announce(ip)
        announcer.announce(other)
        time.sleep(0.3)  # the 0 and 0.2 s repeats of each are out
        announcer.hold({other})  # the election gave ip back to its node
        time.sleep(REPEATS_AT[-1] + 0.3)
        theirs.setblocking(False)
        seen: dict[str, int] = defaultdict(int)
        while True:
            try:
                frame = Ether(theirs.recv(2048))
            except BlockingIOError:
                break
            seen[frame[ARP].psrc if ARP in frame else frame[ICMPv6ND_NA].tgt] += 1
        assert seen[ip] == 2  # one NA at 0 s, one at 0.2 s; none after the hand-back
        assert seen[other] == 2 * len(REPEATS_AT)  # the one still held: every repeat
    finally:
        announcer.close()
        theirs.close()


def test_held_addresses_are_refreshed_and_released_ones_are_not():
    """metallb#2910: switches forget a MAC's port after their FDB ageing while clients keep
    their ARP entries; each address held is announced again every refresh interval."""
    ours, theirs = _pair()
    theirs.settimeout(0.2)
    announcer = Announcer("test0", MAC, sock=ours, refresh=0.5)
    held, released = "192.168.198.241", "fd00:198::f1"
    try:
        announcer.hold({held, released})
        announcer.hold({held})  # the IPv6 one moved to another node
        seen: dict[str, list[float]] = defaultdict(list)
        start = time.monotonic()
        while time.monotonic() - start < 2.2:
            try:
                frame = Ether(theirs.recv(2048))
            except TimeoutError:
                continue
            ip = frame[ARP].psrc if ARP in frame else frame[ICMPv6ND_NA].tgt
            seen[ip].append(time.monotonic() - start)
        times = sorted(set(round(t, 1) for t in seen[held]))
        print(f"refreshes of {held} at {times}")
        assert released not in seen
        assert 4 <= len(seen[held]) // 2 <= 6  # a request and a reply each 0.5 s
        assert announcer.refreshed >= 4
    finally:
        announcer.close()
        theirs.close()


@pytest.mark.kernel  # a veth pair in a network namespace
def test_the_uplink_joins_each_held_ipv6_addresss_solicited_node_group():
    """RFC 4861 7.2.1: solicitations go to the solicited-node group, which a real NIC drops
    unless joined; the joins go with the socket (ip maddr shows them)."""
    from controlplane.l2.announce import solicited_node_mac
    from tests.kernel import netns, sh

    with netns() as ns:
        sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", ns, "link", "set", "up0", "up")
        from tests.kernel import inside

        with inside(ns):
            announcer = Announcer("up0", MAC, refresh=0)

            def groups() -> str:
                return sh("ip", "-n", ns, "maddr", "show", "dev", "up0").stdout

            try:
                announcer.hold({"fd00:198::f0", "fd00:198::1:f1", "192.168.198.240"})
                joined = groups()
                for ip in ("fd00:198::f0", "fd00:198::1:f1"):
                    assert solicited_node_mac(ip).hex(":") in joined, joined
                announcer.hold({"fd00:198::1:f1"})
                left = groups()
                assert solicited_node_mac("fd00:198::f0").hex(":") not in left
                assert solicited_node_mac("fd00:198::1:f1").hex(":") in left
            finally:
                announcer.close()
            assert solicited_node_mac("fd00:198::1:f1").hex(":") not in groups()
