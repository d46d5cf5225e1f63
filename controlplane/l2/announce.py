"""Telling the LAN that a LoadBalancer IP moved here: gratuitous ARP (request and reply forms)
for IPv4 and unsolicited neighbour advertisements for IPv6, repeated for a couple of seconds,
so that clients and switches update at once instead of when their caches expire."""

from __future__ import annotations

import heapq
import ipaddress
import logging
import socket
import struct
import threading
import time

log = logging.getLogger("xlb.announce")

REPEATS_AT = (0.0, 0.2, 0.5, 1.0, 2.0)  # seconds after taking an address over
ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed


def checksum(data: bytes) -> int:
    """The internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def garp(mac: bytes, ip: str, op: int) -> bytes:
    """A gratuitous ARP frame: sender and target are the address itself."""
    addr = ipaddress.IPv4Address(ip).packed
    tha = BROADCAST if op == 2 else b"\0" * 6
    return (
        BROADCAST
        + mac
        + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
        + mac
        + addr
        + tha
        + addr
    )


def unsolicited_na(mac: bytes, ip: str) -> bytes:
    """An unsolicited neighbour advertisement (override set) to all nodes."""
    src = ipaddress.IPv6Address(ip).packed
    body = struct.pack("!BBHI", 136, 0, 0, 0x20 << 24) + src + struct.pack("!BB", 2, 1) + mac
    pseudo = src + ALL_NODES + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + ALL_NODES
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


class Announcer:
    """Sends the announcements for addresses taken over, from a raw socket on the uplink, on
    one sender thread: a takeover of a whole pool schedules its addresses, it does not start
    a thread for each. Announcing an address again restarts its repeats."""

    def __init__(self, ifname: str, mac: str, sock: socket.socket | None = None) -> None:
        self.ifname, self.mac = ifname, bytes.fromhex(mac.replace(":", ""))
        if sock is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind((ifname, 0))
        self.sock = sock
        self.sent = 0
        self.cond = threading.Condition()
        self.due: list[tuple[float, int, str, int]] = []  # (when, generation, ip, repeat)
        self.generation: dict[str, int] = {}  # the latest announce() of each address
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="announcer", daemon=True)
        self.thread.start()

    def frames(self, ip: str) -> list[bytes]:
        if ":" in ip:
            return [unsolicited_na(self.mac, ip)]
        return [garp(self.mac, ip, 1), garp(self.mac, ip, 2)]

    def announce(self, ip: str) -> None:
        """Announces ip now and at each of REPEATS_AT after."""
        with self.cond:
            gen = self.generation.get(ip, 0) + 1
            self.generation[ip] = gen
            heapq.heappush(self.due, (time.monotonic(), gen, ip, 0))
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and (not self.due or self.due[0][0] > time.monotonic()):
                    self.cond.wait(self.due[0][0] - time.monotonic() if self.due else None)
                if self.closed:
                    return
                when, gen, ip, repeat = heapq.heappop(self.due)
                if self.generation.get(ip) != gen:
                    continue  # announced again since: that schedule stands
                start = when - REPEATS_AT[repeat]
                if repeat + 1 < len(REPEATS_AT):
                    heapq.heappush(self.due, (start + REPEATS_AT[repeat + 1], gen, ip, repeat + 1))
            for frame in self.frames(ip):
                try:
                    self.sock.send(frame)
                    self.sent += 1
                except OSError as exc:
                    log.warning("announcing %s on %s: %s", ip, self.ifname, exc)
                    break

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(2)
        self.sock.close()
