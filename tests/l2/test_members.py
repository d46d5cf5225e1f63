"""Membership over real UDP sockets: everyone sees everyone, a dead agent is known within a
second, a returning one is back, and forged traffic changes nothing."""

from __future__ import annotations

import socket
import time

import msgpack
import pytest

from controlplane.l2.members import Members, MembersConfig, seal
from tests.helpers import wait_until

KEY = b"lab-shared-secret"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def trio():
    ports = free_ports(3)
    peers = {f"node-{i + 1}": ("127.0.0.1", p) for i, p in enumerate(ports)}
    agents = {
        name: Members(
            MembersConfig(name, "127.0.0.1", addr[1], KEY, peers, meta={"uplink": f"eth{i}"})
        )
        for i, (name, addr) in enumerate(peers.items())
    }
    for a in agents.values():
        a.start()
    yield agents, peers
    for a in agents.values():
        if not a.stopping.is_set():
            a.stop()


def test_a_dead_member_is_known_within_a_second_and_a_returning_one_comes_back(trio):
    agents, peers = trio
    wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()))
    t0 = time.monotonic()
    agents["node-3"].stop()
    seen = wait_until(
        lambda: all("node-3" not in agents[n].alive() for n in ("node-1", "node-2")), since=t0
    )
    print(f"node-3 known dead by both others after {seen:.2f}s (designed for 1 s; bench/failover)")
    assert seen <= 3.0  # generous: a busy 2-core machine; the target is measured in bench/
    back = Members(MembersConfig("node-3", "127.0.0.1", peers["node-3"][1], KEY, peers))
    back.start()
    try:
        wait_until(
            lambda: all(a.alive() == set(peers) for a in (agents["node-1"], agents["node-2"], back))
        )
    finally:
        back.stop()


def test_every_member_learns_what_the_others_say_of_themselves(trio):
    agents, peers = trio
    want = {n: {"uplink": f"eth{i}"} for i, n in enumerate(peers)}
    wait_until(lambda: all(a.meta() == want for a in agents.values()))


def test_forged_garbage_and_oversized_datagrams_are_counted_and_ignored(trio):
    agents, peers = trio
    wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()))
    target = peers["node-1"]
    liar = {"t": "ping", "from": "node-2", "seq": 1, "g": [{"n": "node-3", "s": "dead", "i": 99}]}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(seal(b"wrong key", liar), target)
        s.sendto(b"\x00" * 40 + b"not msgpack at all", target)
        s.sendto(b"x" * 2000, target)
        s.sendto(b"short", target)
        stale = msgpack.packb({**liar, "ts": time.time() - 60})
        import hashlib
        import hmac

        s.sendto(hmac.new(KEY, stale, hashlib.sha256).digest() + stale, target)
    refused = agents["node-1"].refused
    wait_until(lambda: sum(refused.values()) >= 5)
    assert refused["bad_signature"] >= 2 and refused["oversized"] == 1
    assert refused["truncated"] == 1 and refused["stale"] == 1
    time.sleep(0.5)
    assert agents["node-1"].alive() == set(peers)  # the lie about node-3 was not believed


def test_a_lone_peer_that_dies_is_declared_dead():
    """With one other member only, every probe of it fails for a whole interval: the
    suspicion must still run out."""
    a_port, b_port = free_ports(2)
    peers = {"a": ("127.0.0.1", a_port), "b": ("127.0.0.1", b_port)}
    a = Members(MembersConfig("a", "127.0.0.1", a_port, KEY, peers))
    b = Members(MembersConfig("b", "127.0.0.1", b_port, KEY, peers))
    a.start()
    b.start()
    try:
        wait_until(lambda: a.alive() == {"a", "b"})
        b.stop()
        t0 = time.monotonic()
        took = wait_until(lambda: a.alive() == {"a"}, since=t0)
        print(f"b known dead after {took:.2f}s (designed for 1 s)")
        assert took <= 3.0  # generous, as above
    finally:
        a.stop()


def test_the_prober_survives_a_member_table_that_every_sync_changes():
    """Each sync hands the members over again (set_peers); the prober iterated the table
    without the lock, died of `dictionary changed size during iteration`, and no member was
    ever declared dead again. Churn the table hard while probing unreachable peers."""
    import threading

    (port,) = free_ports(1)
    me = Members(MembersConfig("node-1", "127.0.0.1", port, KEY, probe_interval=0.01,
                               probe_timeout=0.002, suspect_timeout=0.05))  # fmt: skip
    dead_ports = free_ports(400)  # nothing listens: every probe fails, indirect ones too
    peers = [{f"n{i}": ("127.0.0.1", p) for i, p in enumerate(dead_ports) if i % 2 == k}
             for k in (0, 1)]  # fmt: skip
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for table in peers:
                me.set_peers({**table, "node-1": ("127.0.0.1", port)})

    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave at every few bytecodes: races show
    me.start()
    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        time.sleep(2.0)
        rounds = me.probes
        time.sleep(0.5)
        assert me.threads[1].is_alive(), "the prober died"
        assert me.probes > rounds, "the prober stopped probing"
        assert me.probe_errors == 0, me.probe_errors
    finally:
        stop.set()
        churner.join(2)
        sys.setswitchinterval(switch)
        me.stop()
    # and, the table still, unreachable members are found dead (the prober works)
    few = dict(list(peers[0].items())[:3])
    me2 = Members(MembersConfig("node-1", "127.0.0.1", free_ports(1)[0], KEY, peers=few))
    me2.start()
    try:
        wait_until(lambda: me2.alive() == {"node-1"}, timeout=10)
    finally:
        me2.stop()


def test_a_replayed_or_forged_datagram_changes_nothing(trio):
    """A captured datagram replayed (within the clock's window), a dead member's old words
    replayed after its death, and a key holder speaking for another member from its own
    address: each is refused and counted, and the member table stays as it was."""
    agents, peers = trio
    wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()))
    one, two, three = agents["node-1"], agents["node-2"], agents["node-3"]
    captured: list[tuple[bytes, tuple]] = []

    class Tap:  # what a listener on the LAN would have seen of node-3
        def __init__(self, sock):
            self.sock = sock

        def __getattr__(self, name):
            return getattr(self.sock, name)

        def sendto(self, data, address):
            if tuple(address[:2]) == peers["node-1"]:
                captured.append((data, address))
            return self.sock.sendto(data, address)

    three.sock = Tap(three.sock)
    wait_until(lambda: len(captured) >= 3)
    three.stop()  # node-3 dies ...
    wait_until(lambda: "node-3" not in one.alive(), timeout=5)
    before = dict(one.refused)
    # ... and its words are replayed from its address (the port it spoke from is free now)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(peers["node-3"])
        for data, address in captured:
            s.sendto(data, address)
    wait_until(lambda: one.refused["replayed"] - before.get("replayed", 0) >= len(captured))
    assert "node-3" not in one.alive()  # every replay was handled: the dead stay dead

    # node-2 holds the key too: it speaks for node-1's neighbour node-3 from its own address
    lie = {"t": "ping", "from": "node-3", "seq": 7, "b": 1, "c": 10**9,
           "g": [{"n": "node-3", "s": "alive", "i": 10**6}]}  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(seal(KEY, lie), peers["node-1"])
    wait_until(lambda: one.refused["wrong_source"] >= 1)
    assert "node-3" not in one.alive()  # the lie was handled, and refused
    assert two.alive() >= {"node-1", "node-2"}


def test_a_member_with_a_skewed_clock_is_not_taken_for_dead(trio):
    """node-2's clock runs 30 s ahead: each side refuses the other's datagrams as stale, so
    each soon holds the other dead. The stale but signed datagrams from the member's own
    address say it lives: skewed() names it, and the election counts it alive (a node with
    a wrong clock would otherwise hear nobody and claim every address)."""
    agents, peers = trio
    wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()))
    agents["node-2"].clock = lambda: time.time() + 30
    one = agents["node-1"]
    wait_until(lambda: "node-2" not in one.alive(), timeout=5)
    wait_until(lambda: one.skewed() == {"node-2"}, timeout=3)
    # and it sees the same of them
    wait_until(lambda: agents["node-2"].skewed() == {"node-1", "node-3"}, timeout=3)
    assert one.refused["stale"] > 0
    agents["node-2"].clock = time.time  # the clock is fixed: it is heard fresh again
    wait_until(lambda: "node-2" in one.alive(), timeout=5)


def test_an_ipv6_only_cluster_gossips_over_ipv6():
    """Nodes with IPv6 addresses only: the agents bind and find each other over IPv6, and the
    election sees both."""
    from controlplane.agent import gossip_address, gossip_peers
    from controlplane.model.objects import Node

    nodes = [Node("node-1", ("::1",)), Node("node-2", ("::1",)), Node("v4", ("192.0.2.1",))]
    assert gossip_address(["fd00::1"]) == "fd00::1"
    assert gossip_address(["192.0.2.1", "fd00::1"]) == "192.0.2.1"
    socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2)]
    for s in socks:
        s.bind(("::1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    agents = []
    for name, port in zip(("node-1", "node-2"), ports, strict=True):
        cfg = MembersConfig(name, gossip_address(["::1"]), port, KEY)
        agents.append(Members(cfg))
    # as the agent computes them: each Node's IPv6 address (the IPv4-only node is left out)
    for a, port in zip(agents, ports[::-1], strict=True):
        peers = gossip_peers(nodes, a.cfg)
        assert set(peers) == {"node-1", "node-2"}
        a.set_peers({n: ("::1", port) for n in peers})  # both on ::1 here, other ports
    for a in agents:
        a.start()
    try:
        wait_until(lambda: all(a.alive() == {"node-1", "node-2"} for a in agents))
    finally:
        for a in agents:
            a.stop()


def test_a_key_rotates_across_rolling_restarts_without_a_split():
    """Three members on key A; each step restarts one member with its next keyring (one key
    a line: the first signs, any verifies): A+B everywhere, then B+A, then B alone. At every
    step, on every member, everyone is alive: no two halves that cannot hear each other (which
    would each take the other's addresses)."""
    ports = free_ports(3)
    peers = {f"node-{i + 1}": ("127.0.0.1", p) for i, p in enumerate(ports)}

    def member(name: str, ring: bytes) -> Members:
        m = Members(MembersConfig(name, "127.0.0.1", peers[name][1], ring, peers))
        m.start()
        return m

    agents = {name: member(name, b"key-A") for name in peers}
    try:
        wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()))
        for ring in (b"key-A\nkey-B", b"key-B\nkey-A", b"key-B"):
            for name in peers:  # a rolling restart, one node at a time
                agents[name].stop()
                agents[name] = member(name, ring)
                wait_until(lambda: all(a.alive() == set(peers) for a in agents.values()),
                           timeout=5)  # fmt: skip
                time.sleep(0.4)  # more than a suspicion's life: nobody is losing anyone
                assert all(a.alive() == set(peers) for a in agents.values()), (ring, name)
        assert all(a.keys == [b"key-B"] for a in agents.values())
    finally:
        for a in agents.values():
            a.stop()


def test_a_key_switched_without_the_overlap_splits_the_members():
    """The control for the rotation above: one member moved straight from A to B hears no
    one, and no one hears it."""
    ports = free_ports(2)
    peers = {"a": ("127.0.0.1", ports[0]), "b": ("127.0.0.1", ports[1])}
    a = Members(MembersConfig("a", "127.0.0.1", ports[0], b"key-A", peers))
    b = Members(MembersConfig("b", "127.0.0.1", ports[1], b"key-B", peers))
    a.start()
    b.start()
    try:
        wait_until(lambda: a.alive() == {"a"} and b.alive() == {"b"}, timeout=5)
        assert a.refused["bad_signature"] > 0
    finally:
        a.stop()
        b.stop()


class Recorder:
    """A socket that keeps a copy of every datagram it sends (an eavesdropper's capture)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sent = sock, []

    def sendto(self, data: bytes, address) -> int:
        self.sent.append((data, address))
        return self.sock.sendto(data, address)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_member_that_leaves_is_dead_at_once_and_its_replayed_leave_kills_nobody():
    """A rolling restart: the leaving member says so and the others know it at once, the
    returning one is greeted back at once, and its captured goodbye, replayed at the new
    run, is refused. Nobody probes here (a 60 s interval), so only the goodbye and the
    greeting can tell the others anything."""
    ports = free_ports(3)
    peers = {f"node-{i + 1}": ("127.0.0.1", p) for i, p in enumerate(ports)}

    def member(name: str) -> Members:
        m = Members(MembersConfig(name, "127.0.0.1", peers[name][1], KEY, peers,
                                  probe_interval=60))  # fmt: skip
        m.start()
        return m

    agents = {name: member(name) for name in peers}
    others = [agents["node-1"], agents["node-2"]]
    back = None
    try:
        leaving = agents["node-3"]
        leaving.sock = Recorder(leaving.sock)
        t0 = time.monotonic()
        leaving.leave()
        gone = wait_until(lambda: all("node-3" not in a.alive() for a in others), 2.0, since=t0)
        print(f"node-3 left; both others knew after {gone * 1000:.1f} ms")
        goodbyes = [(d, a) for d, a in leaving.sock.sent if b"leave" in d]
        assert goodbyes
        t1 = time.monotonic()
        back = member("node-3")
        seen = wait_until(lambda: all(a.alive() == set(peers) for a in others), 2.0, since=t1)
        print(f"node-3 back; both others knew after {seen * 1000:.1f} ms")
        before = agents["node-1"].refused["replayed"]
        for data, address in goodbyes:
            back.sock.sendto(data, address)  # from node-3's own address: only the age tells
        wait_until(lambda: agents["node-1"].refused["replayed"] > before)
        time.sleep(0.3)
        assert all(a.alive() == set(peers) for a in others)
    finally:
        for m in [*others, back]:
            if m is not None:
                m.stop()


def test_a_restarted_member_is_not_killed_again_by_the_rumour_of_its_last_death():
    """node-3 leaves: node-1 and node-2 gossip its death on every datagram for a while. Its
    new run greets both, and then the two talk to each other, each datagram carrying that
    rumour; node-3 is not among the receivers, so it cannot refute. The rumour is of the old
    run's incarnation, which the greeting already outbid: node-3 stays alive. (Before, a new
    run started at incarnation 0 again, the same as the rumour's, and was dead once more
    until a probe reached it: seen on a loaded clean-clone run.)"""
    ports = free_ports(3)
    peers = {f"node-{i + 1}": ("127.0.0.1", p) for i, p in enumerate(ports)}

    def member(name: str) -> Members:
        m = Members(MembersConfig(name, "127.0.0.1", peers[name][1], KEY, peers,
                                  probe_interval=60))  # fmt: skip
        m.start()
        return m

    agents = {name: member(name) for name in peers}
    one, two = agents["node-1"], agents["node-2"]
    back = None
    try:
        t0 = time.monotonic()
        agents["node-3"].leave()
        print(f"leave() took {(time.monotonic() - t0) * 1000:.1f} ms")
        wait_until(lambda: all("node-3" not in a.alive() for a in (one, two)), 2.0)
        assert any(g["n"] == "node-3" and g["s"] == "dead" for g in one.gossip[-8:])
        back = member("node-3")
        wait_until(lambda: all(a.alive() == set(peers) for a in (one, two)), 2.0)
        for sender, receiver in ((one, two), (two, one)):

            def heard(r: Members = receiver, s: Members = sender) -> int:
                return r.heard.get(s.cfg.name, (0, -1, 0.0))[1]

            before = heard()
            sender._send(peers[receiver.cfg.name], {"t": "news"})
            wait_until(lambda h=heard, b=before: h() > b, 2.0)
        assert one.alive() == two.alive() == set(peers)
    finally:
        for m in (one, two, back):
            if m is not None:
                m.stop()


def test_a_starting_member_settles_before_taking_over():
    (port,) = free_ports(1)
    m = Members(MembersConfig("node-1", "127.0.0.1", port, KEY, settle=0.3))
    try:
        assert not m.settled()
        wait_until(m.settled, 1.0)
    finally:
        m.sock.close()
