"""Which agents are alive: SWIM-style gossip over UDP, authenticated.

Every probe interval an agent pings the next member (round robin). No ack within the probe
timeout: it asks `indirect` other members to ping the target for it. Still nothing by the end
of the interval: the target is suspect, which is gossiped; a suspect that does not refute it
(by gossiping `alive` with a higher incarnation) within the suspect timeout is dead. With the
defaults (120 ms interval, 50 ms timeout, 250 ms suspicion) a dead node is known in under a
second by whoever probes it, and by the others through gossip piggybacked on every message. An
agent that stops on purpose (a rolling restart) says it leaves, and is dead for the others
at once; one that starts greets every member and waits `settle` before taking anything over.

Each datagram is msgpack, signed with HMAC-SHA256 under the cluster's shared key and stamped
with the sender's clock: a datagram that is too big, not msgpack, wrongly signed or more than
`max_skew` seconds old is dropped and counted, and nothing else happens. Every datagram also
carries its sender's boot id and a counter that only grows: one that repeats or goes back
(a captured datagram replayed, a dead node's old words) is dropped, as is one whose claimed
sender is not a member, or does not come from that member's address (another key holder
speaking for it); a restarted sender (new boot id) is believed when its clock moved on.

Every datagram carries its sender's incarnation too, and a run starts at its clock in
milliseconds: a restarted member is above the incarnation it died with, so the rumour of that
death, still riding on the others' datagrams, no longer kills it again before it can refute.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack

from .holdings import Assembler, chunks

log = logging.getLogger("xlb.members")

MAX_DATAGRAM = 1400
MAC_LEN = 32


@dataclass
class MembersConfig:
    name: str
    address: str
    port: int
    key: bytes
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (address, port)
    # worst case for a dead member with N others: N probe intervals until it is probed and
    # fails, then the suspicion; 3 nodes: 3 x 0.12 (a reshuffled round) + 0.12 + 0.25
    # = 0.73 s; the expiry is checked every 20 ms and the death told to all at once
    probe_interval: float = 0.12
    probe_timeout: float = 0.05
    suspect_timeout: float = 0.25
    indirect: int = 2
    max_skew: float = 5.0
    # a starting member takes over no address it does not hold for this long: the others
    # hear it (it greets each at once) and let its addresses go first, so that none is
    # answered twice; the cost is a gap of well under a second, which cached ARP entries
    # (still pointing at a node that serves the address) ride out
    settle: float = 1.0
    meta: dict[str, str] = field(default_factory=dict)  # told to everyone (e.g. the uplink)


@dataclass
class Member:
    name: str
    address: tuple[str, int]
    state: str = "alive"  # alive | suspect | dead
    incarnation: int = 0
    since: float = 0.0  # when it entered its state (monotonic)
    meta: dict[str, str] = field(default_factory=dict)  # what it says of itself


def seal(key: bytes, message: dict, now: float | None = None) -> bytes:
    body = msgpack.packb({**message, "ts": time.time() if now is None else now}, use_bin_type=True)
    return hmac.new(key, body, hashlib.sha256).digest() + body


def unseal(
    key: bytes | list[bytes], data: bytes, max_skew: float, now: float | None = None
) -> tuple[dict | None, str]:
    """The message and "", or why it was refused: None, or for "stale" the (signed) message,
    so that the caller can tell whose clock disagrees."""
    if len(data) > MAX_DATAGRAM:
        return None, "oversized"
    if len(data) <= MAC_LEN:
        return None, "truncated"
    mac, body = data[:MAC_LEN], data[MAC_LEN:]
    keys = key if isinstance(key, list) else [key]
    if not any(hmac.compare_digest(mac, hmac.new(k, body, hashlib.sha256).digest()) for k in keys):
        return None, "bad_signature"
    try:
        msg = msgpack.unpackb(body, raw=False)
    except Exception:  # noqa: BLE001 (signed garbage is still garbage)
        return None, "malformed"
    if not isinstance(msg, dict):
        return None, "malformed"
    if abs((time.time() if now is None else now) - float(msg.get("ts", 0))) > max_skew:
        return msg, "stale"
    return msg, ""


class Members:
    def __init__(self, cfg: MembersConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        now = time.monotonic()
        self.members = {n: Member(n, a, since=now) for n, a in cfg.peers.items() if n != cfg.name}
        # above any earlier run's (its clock moved on), so that gossip of this node's last
        # death, which carries that run's incarnation, loses to this run's word
        self.incarnation = int(time.time() * 1000)
        self.seq = 0
        self.acks: dict[int, threading.Event] = {}
        self.gossip: list[dict] = []  # recent state changes, piggybacked on every message
        self.refused: Counter = Counter()
        self.boot = random.getrandbits(63)  # this run's id: the counter starts again with it
        self.sent = 0  # the counter on every datagram sent
        self.heard: dict[str, tuple[int, int, float]] = {}  # sender -> (boot, counter, ts)
        self.stale_from: dict[str, float] = {}  # member -> when its last stale datagram came
        # the keyring: one key a line, the first signs, any verifies (a rotation: add the new
        # key second everywhere, then first, then drop the old, one rolling restart each)
        self.keys = [k.strip() for k in cfg.key.splitlines() if k.strip()] or [cfg.key]
        self.clock = time.time  # the wall clock datagrams are stamped and judged by
        self.probes = 0  # rounds run
        self.probe_errors = 0  # rounds that raised (logged; probing goes on)
        self.stopping = threading.Event()
        self.started = time.monotonic()
        # the LoadBalancer IPs this member says it announces (holdings.py), a chunk per
        # datagram, in turn per destination; and each member's, as heard
        self.holdings_out: tuple[int, list[bytes]] | None = None
        self.holdings_turn: dict[tuple, int] = {}
        self.holdings_in: dict[str, Assembler] = {}
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in cfg.address else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.bind((cfg.address, cfg.port))
        self.sock.settimeout(0.1)
        self.threads = [
            threading.Thread(target=self._receive, daemon=True),
            threading.Thread(target=self._probe_loop, daemon=True),
        ]

    # -- the public side ---------------------------------------------------------------------

    def start(self) -> None:
        for t in self.threads:
            t.start()
        with self.lock:
            known = [m.address for m in self.members.values()]
        for address in known:  # hello: a restarted member is known back at once
            self._send(address, {"t": "news"})

    def _halt(self) -> None:
        """Stops the threads, waking a probe that waits for an ack (up to a whole interval)."""
        self.stopping.set()
        for event in list(self.acks.values()):
            event.set()
        for t in self.threads:
            t.join(2)

    def stop(self) -> None:
        self._halt()
        self.sock.close()

    def leave(self) -> None:
        """A clean stop: no more probes or answers, then every member is told this one left
        (twice: a datagram may be lost), so they elect again now rather than after a failed
        probe and a suspicion. The caller silences the kernel's answers first."""
        self._halt()
        with self.lock:
            others = [m.address for m in self.members.values() if m.state != "dead"]
        for _ in range(2):
            for address in others:
                self._send(address, {"t": "leave"})
        self.sock.close()

    def settled(self) -> bool:
        """Whether this member has been up long enough to take over addresses (see settle)."""
        return time.monotonic() - self.started >= self.cfg.settle

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """Follows the cluster's nodes: new ones join as alive (and are greeted at once, so
        a restarted member is known back without waiting for its probe round), gone ones are
        forgotten."""
        now = time.monotonic()
        greet = []
        with self.lock:
            for name, address in peers.items():
                if name == self.cfg.name:
                    continue
                m = self.members.get(name)
                if m is None:
                    self.members[name] = Member(name, address, since=now)
                    greet.append(address)
                else:
                    m.address = address
            for name in [n for n in self.members if n not in peers]:
                del self.members[name]
                self.holdings_in.pop(name, None)
        for address in greet:
            self._send(address, {"t": "news"})

    def alive(self) -> set[str]:
        """Members believed alive (suspects included: they may yet refute), and this one."""
        with self.lock:
            return {m.name for m in self.members.values() if m.state != "dead"} | {self.cfg.name}

    def dead(self) -> set[str]:
        """Members the gossip has declared dead (not merely unheard at start: a new peer
        joins as alive)."""
        with self.lock:
            return {m.name for m in self.members.values() if m.state == "dead"}

    def set_meta(self, key: str, value: str) -> None:
        """Tells everyone key=value of this member from the next datagram on."""
        with self.lock:
            self.cfg.meta = {**self.cfg.meta, key: value}

    def set_holdings(self, ips: set[str]) -> None:
        """Tells everyone the LoadBalancer IPs this member announces: at once when they
        change (every chunk to every live member), then a chunk on each datagram."""
        version, parts = chunks(ips)
        with self.lock:
            if self.holdings_out is not None and self.holdings_out[0] == version:
                return
            self.holdings_out, self.holdings_turn = (version, parts), {}
            others = [m.address for m in self.members.values() if m.state != "dead"]
        for address in others:
            for _ in range(len(parts)):
                self._send(address, {"t": "news"})

    def holdings(self) -> dict[str, set[str]]:
        """Each member's last complete holdings (members never heard from: absent)."""
        with self.lock:
            return {n: set(a.ips) for n, a in self.holdings_in.items() if a.version is not None}

    def holdings_versions(self) -> dict[str, int]:
        with self.lock:
            return {n: a.version for n, a in self.holdings_in.items() if a.version is not None}

    def meta(self) -> dict[str, dict[str, str]]:
        """What each member (this one included) says of itself, as last heard."""
        with self.lock:
            out = {m.name: dict(m.meta) for m in self.members.values() if m.meta}
        return out | {self.cfg.name: dict(self.cfg.meta)}

    # -- sending and receiving ---------------------------------------------------------------

    def _send(self, address: tuple[str, int], message: dict) -> None:
        with self.lock:
            self.sent += 1
            message = {**message, "from": self.cfg.name, "g": self.gossip[-8:]}
            message["b"], message["c"] = self.boot, self.sent
            message["i"] = self.incarnation
            if self.cfg.meta:
                message["m"] = self.cfg.meta
            if self.holdings_out is not None:
                version, parts = self.holdings_out
                where = tuple(address[:2])
                turn = self.holdings_turn.get(where, 0) % len(parts)
                self.holdings_turn[where] = turn + 1
                message["h"] = [version, turn, len(parts), parts[turn]]
        with contextlib.suppress(OSError):  # an unreachable peer is what probing finds out
            self.sock.sendto(seal(self.keys[0], message, self.clock()), address)

    def _receive(self) -> None:
        while not self.stopping.is_set():
            try:
                data, sender = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            msg, why = unseal(self.keys, data, self.cfg.max_skew, self.clock())
            if why:
                self.refused[why] += 1
                if why == "stale":
                    self._heard_stale(msg, sender)
                continue
            try:
                why = self._fresh_from_its_sender(msg, sender)
                if why:
                    self.refused[why] += 1
                    continue
                self._handle(msg, sender)
            except (KeyError, TypeError, ValueError):
                self.refused["malformed"] += 1

    def _heard_stale(self, msg: dict, sender: tuple) -> None:
        """A member's signed datagram whose stamp is off by more than max_skew: one of the
        two clocks is wrong, and the member is likely alive (see skewed)."""
        with contextlib.suppress(KeyError, TypeError, ValueError):
            origin = str(msg["from"])
            with self.lock:
                member = self.members.get(origin)
                if member is not None and tuple(member.address[:2]) == tuple(sender[:2]):
                    self.stale_from[origin] = time.monotonic()

    def known(self) -> int:
        """Members in the table, this node included."""
        with self.lock:
            return len(self.members) + 1

    def skewed(self, within: float = 3.0) -> set[str]:
        """Members heard from lately only with stamps outside max_skew: their clock or ours
        is off. The election treats them as alive, so that a node with a wrong clock, which
        hears nobody fresh, never claims every address (nor do the others claim its)."""
        now = time.monotonic()
        with self.lock:
            return {
                n for n, at in self.stale_from.items() if now - at < within and n in self.members
            }

    def _fresh_from_its_sender(self, msg: dict, sender: tuple) -> str:
        """Why a signed datagram is still refused ("" if it is not): its sender must be a
        member, at that member's address, and say something it has not said before."""
        origin = str(msg["from"])
        boot, counter, ts = int(msg["b"]), int(msg["c"]), float(msg["ts"])
        with self.lock:
            member = self.members.get(origin)
            if member is None:
                return "unknown_sender"
            if tuple(member.address[:2]) != tuple(sender[:2]):
                return "wrong_source"
            last = self.heard.get(origin)
            if last is not None:
                same_run = boot == last[0]
                if (same_run and counter <= last[1]) or (not same_run and ts <= last[2]):
                    return "replayed"
            self.heard[origin] = (boot, counter, ts)
        return ""

    def _handle(self, msg: dict, sender: tuple) -> None:
        for change in msg.get("g") or []:
            self._apply(change)
        kind, origin = msg["t"], str(msg["from"])
        if kind == "leave":  # (a replayed one was refused by its counter already)
            self._left(origin)
            return
        self._heard_from(origin, msg.get("m"), msg.get("i"))
        if "h" in msg:
            self._heard_holdings(origin, msg["h"])
        if kind == "ping":
            self._send(
                sender[:2],
                {
                    "t": "ack",
                    "seq": msg["seq"],
                    "relay": msg.get("relay"),
                    "relay_seq": msg.get("relay_seq"),
                },
            )
        elif kind == "ack":
            if msg.get("relay"):  # an indirect probe's answer, to pass back
                relay = msg["relay"]
                self._send((relay[0], relay[1]), {"t": "ack", "seq": msg["relay_seq"]})
            event = self.acks.get(int(msg["seq"]))
            if event:
                event.set()
        elif kind == "ping-req":
            target = self.members.get(str(msg["target"]))
            if target:
                self._send(
                    target.address,
                    {
                        "t": "ping",
                        "seq": self._next_seq(),
                        "relay": list(sender[:2]),
                        "relay_seq": msg["seq"],
                    },
                )

    def _heard_from(self, name: str, meta: object = None, incarnation: object = None) -> None:
        """A member spoke: it is alive. Its incarnation (absent from an older agent's
        datagrams) is what it says now, and every rumour about it at or below it is old."""
        inc = incarnation if isinstance(incarnation, int) and incarnation >= 0 else None
        with self.lock:
            m = self.members.get(name)
            if m is None:
                return
            if isinstance(meta, dict):
                m.meta = {str(k): str(v) for k, v in list(meta.items())[:8]}
            newer = inc is not None and inc > m.incarnation
            if newer:
                m.incarnation = inc
            if m.state == "dead" or (newer and m.state == "suspect"):
                back = m.state == "dead"
                m.state, m.since = "alive", time.monotonic()
                self.gossip.append({"n": name, "s": "alive", "i": m.incarnation})
                if back:
                    log.info("member %s is back", name)

    def _heard_holdings(self, name: str, chunk: object) -> None:
        """One chunk of a member's holdings; a bad one is counted, and the rest of the
        datagram still counts (the member is alive)."""
        try:
            version, index, count, part = chunk  # type: ignore[misc]
            if not isinstance(part, bytes):
                raise ValueError("holdings chunk is not bytes")
            with self.lock:
                if name not in self.members:
                    return
                self.holdings_in.setdefault(name, Assembler()).add(
                    int(version), int(index), int(count), part
                )
        except (TypeError, ValueError):
            self.refused["bad_holdings"] += 1

    def _left(self, name: str) -> None:
        """A member said it stops: dead now, and told to the others on the next datagrams."""
        with self.lock:
            m = self.members.get(name)
            if m is None or m.state == "dead":
                return
            m.state, m.since = "dead", time.monotonic()
            self.gossip.append({"n": name, "s": "dead", "i": m.incarnation})
        log.info("member %s left", name)

    def _apply(self, change: dict) -> None:
        name, state, inc = str(change["n"]), str(change["s"]), int(change["i"])
        if name == self.cfg.name:
            if state in ("suspect", "dead") and inc >= self.incarnation:
                with self.lock:  # refute: we are alive, with a newer incarnation
                    self.incarnation = inc + 1
                    self.gossip.append({"n": name, "s": "alive", "i": self.incarnation})
            return
        with self.lock:
            m = self.members.get(name)
            if m is None or inc < m.incarnation:
                return
            if (
                state == "alive"
                and inc > m.incarnation
                or (
                    state != "alive"
                    and (
                        inc > m.incarnation
                        or (m.state, state)
                        in (("alive", "suspect"), ("alive", "dead"), ("suspect", "dead"))
                    )
                )
            ):
                m.state, m.incarnation, m.since = state, inc, time.monotonic()
                self.gossip.append(change)

    # -- probing -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def _ping(self, address: tuple[str, int], timeout: float) -> bool:
        seq = self._next_seq()
        event = self.acks[seq] = threading.Event()
        self._send(address, {"t": "ping", "seq": seq})
        ok = event.wait(timeout)
        self.acks.pop(seq, None)
        return ok

    def _probe(self, target: Member, deadline: float) -> bool:
        if self._ping(target.address, self.cfg.probe_timeout):
            return True
        with self.lock:  # each sync changes the table (set_peers): never iterate it bare
            helpers = [m for m in self.members.values() if m is not target and m.state == "alive"]
        if not helpers:
            return False  # nobody to ask: the direct probe was the only one
        seq = self._next_seq()
        event = self.acks[seq] = threading.Event()
        for h in random.sample(helpers, min(self.cfg.indirect, len(helpers))):
            self._send(h.address, {"t": "ping-req", "seq": seq, "target": target.name})
        ok = event.wait(max(0.0, deadline - time.monotonic()))
        self.acks.pop(seq, None)
        return ok

    def _probe_loop(self) -> None:
        """Until stopped, whatever one round meets: a prober that died would leave every
        member alive for good, and failover would silently stop."""
        order: list[str] = []
        while not self.stopping.is_set():
            try:
                order = self._probe_round(order)
            except Exception:  # noqa: BLE001 (logged; the next round goes on)
                log.exception("gossip probe round failed; probing goes on")
                self.probe_errors += 1
                self.stopping.wait(self.cfg.probe_interval)

    def _probe_round(self, order: list[str]) -> list[str]:
        start = time.monotonic()
        deadline = start + self.cfg.probe_interval
        if not order:
            with self.lock:
                order = sorted(self.members)
            random.shuffle(order)
        with self.lock:
            target = self.members.get(order.pop()) if order else None
        self.probes += 1
        if target is not None and not self._probe(target, deadline):
            with self.lock:
                if target.state == "alive":
                    target.state, target.since = "suspect", time.monotonic()
                    self.gossip.append({"n": target.name, "s": "suspect", "i": target.incarnation})
        self._expire_suspects()  # after every probe: a failed one uses the whole interval
        while not self.stopping.is_set() and time.monotonic() < deadline:
            self.stopping.wait(min(0.02, max(0.0, deadline - time.monotonic())))
            self._expire_suspects()  # often: a suspicion ends on time, not at a tick
        return order

    def _expire_suspects(self) -> None:
        now = time.monotonic()
        died = []
        with self.lock:
            for m in self.members.values():
                if m.state == "suspect" and now - m.since > self.cfg.suspect_timeout:
                    m.state, m.since = "dead", now
                    self.gossip.append({"n": m.name, "s": "dead", "i": m.incarnation})
                    died.append(m.name)
            self.gossip = self.gossip[-64:]
            others = [m.address for m in self.members.values() if m.state == "alive"]
        for name in died:
            log.info("member %s is dead", name)
        if died:  # news of a death is told at once, not on the next piggyback
            for address in others:
                self._send(address, {"t": "news"})
