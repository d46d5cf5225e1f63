"""Telling the LAN that a LoadBalancer IP moved here: gratuitous ARP (request and reply forms)
for IPv4 and unsolicited neighbour advertisements for IPv6, repeated for a couple of seconds,
so that clients and switches update at once instead of when their caches expire; and again
every refresh interval while the address stays here, because a switch forgets where a MAC
lives after its FDB ageing (300 s commonly) while a client's ARP entry may live on, and
frames for the address are then flooded or lost (metallb#2910).

For each IPv6 address held, the uplink joins the address's solicited-node multicast group
(RFC 4861 7.2.1): a NIC filters multicast it has not joined, and neighbour solicitations go
to that group, so without it a real NIC never shows them to XDP (a veth does not filter)."""

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
DEFAULT_REFRESH = 240.0  # seconds: a little under the common 300 s FDB ageing
REFRESH_RATE = 100  # addresses refreshed a second at most (a node holding thousands)
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_DROP_MEMBERSHIP, PACKET_MR_MULTICAST = 263, 1, 2, 0
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


def solicited_node_mac(ip: str) -> bytes:
    """The MAC of an IPv6 address's solicited-node group ff02::1:ffXX:XXXX (RFC 4291 2.7.1,
    RFC 2464 7): 33:33 and the group's last four bytes."""
    return b"\x33\x33\xff" + ipaddress.IPv6Address(ip).packed[-3:]


class Announcer:
    """Sends the announcements for addresses taken over, from a raw socket on the uplink, on
    one sender thread: a takeover of a whole pool schedules its addresses, it does not start
    a thread for each. Announcing an address again restarts its repeats. hold() says which
    addresses this node answers for now: those are refreshed every refresh seconds (0: never),
    at most REFRESH_RATE a second, and their solicited-node groups joined."""

    def __init__(self, ifname: str, mac: str, sock: socket.socket | None = None,
                 refresh: float = DEFAULT_REFRESH) -> None:  # fmt: skip
        self.ifname, self.mac = ifname, bytes.fromhex(mac.replace(":", ""))
        self.ifindex = 0
        if sock is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind((ifname, 0))
            self.ifindex = socket.if_nametoindex(ifname)
        self.sock = sock
        self.refresh = refresh
        self.held: set[str] = set()
        self.holding = False  # hold() was called: held is the election's word, not a default
        self.groups: set[bytes] = set()  # solicited-node MACs joined on the uplink
        self.last_sent: dict[str, float] = {}
        self.refreshed = 0
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

    def hold(self, ips: set[str]) -> None:
        """The addresses this node answers for now (the election's, after each change)."""
        with self.cond:
            self.held, self.holding = set(ips), True
            for ip in list(self.last_sent):
                if ip not in self.held:
                    del self.last_sent[ip]
            self._join_groups({solicited_node_mac(ip) for ip in self.held if ":" in ip})
            self.cond.notify()

    def _join_groups(self, wanted: set[bytes]) -> None:
        """Joins and leaves solicited-node groups on the uplink (through this socket's own
        memberships: the kernel drops them with the socket, so a crash leaves none)."""
        if not self.ifindex:
            self.groups = wanted  # a test's socket: nothing to join
            return
        for mac, op in [(m, PACKET_DROP_MEMBERSHIP) for m in self.groups - wanted] + [
            (m, PACKET_ADD_MEMBERSHIP) for m in wanted - self.groups
        ]:
            mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_MULTICAST, 6, mac)
            try:
                self.sock.setsockopt(SOL_PACKET, op, mreq)
            except OSError as exc:
                log.warning("solicited-node group %s on %s: %s", mac.hex(":"), self.ifname, exc)
        self.groups = wanted

    def _stale(self, now: float) -> list[str]:
        """Held addresses due for their refresh, oldest first, at most a second's worth."""
        if not self.refresh:
            return []
        due = [ip for ip in self.held if now - self.last_sent.get(ip, 0.0) >= self.refresh]
        return sorted(due, key=lambda ip: self.last_sent.get(ip, 0.0))[:REFRESH_RATE]

    def _run(self) -> None:
        while True:
            refreshing: list[str] = []
            with self.cond:
                while not self.closed:
                    now = time.monotonic()
                    if self.due and self.due[0][0] <= now:
                        break
                    refreshing = self._stale(now)
                    if refreshing:
                        break
                    wait = self.due[0][0] - now if self.due else None
                    if self.refresh and self.held:  # until the next refresh falls due
                        soonest = min(self.last_sent.get(ip, 0.0) for ip in self.held)
                        until = max(0.01, soonest + self.refresh - now)
                        wait = until if wait is None else min(wait, until)
                    self.cond.wait(wait)
                if self.closed:
                    return
                if refreshing:
                    for ip in refreshing:
                        self.last_sent[ip] = now
                    ips = refreshing
                else:
                    when, gen, ip, repeat = heapq.heappop(self.due)
                    if self.generation.get(ip) != gen:
                        continue  # announced again since: that schedule stands
                    if self.holding and ip not in self.held:
                        # let go since: its new holder announces it now, and a late repeat
                        # from here would point the LAN back at this node (seen: a client
                        # left on the old holder's MAC, an 8 s failover when that one died)
                        continue
                    start = when - REPEATS_AT[repeat]
                    if repeat + 1 < len(REPEATS_AT):
                        heapq.heappush(
                            self.due, (start + REPEATS_AT[repeat + 1], gen, ip, repeat + 1)
                        )
                    if ip in self.held or not self.holding:
                        self.last_sent[ip] = time.monotonic()
                    ips = [ip]
            for ip in ips:
                self._send(ip)
            if refreshing:
                self.refreshed += len(refreshing)
                time.sleep(1.0 if len(refreshing) >= REFRESH_RATE else 0)

    def _send(self, ip: str) -> None:
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
