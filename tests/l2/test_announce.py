"""Announcing taken-over addresses: the frames are what RFC 826 (gratuitous ARP) and
RFC 4861 (unsolicited neighbour advertisement) say, read back by scapy; a takeover of a whole
pool runs on one sender thread with the repeats on time."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict

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
