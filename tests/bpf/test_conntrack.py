"""The conntrack's states and timeouts, as netfilter keeps them: a flow's packets go through
the real programs (the client's through xdp_lb, a local backend's replies through tc_lb, a
remote backend's through xdp_lb again), time passes by moving the entries' stamps back, and
each row ends with the question that matters: is the backend's next packet still rewritten
as the Service's (the flow lives), or left alone (it is over, and the same addresses and
ports may be a new, direct connection)? Each row also holds the control plane's copy of the
expiry rule (datapath/conntrack.py, which the collector uses) to the kernel's answer."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.datapath import conntrack
from controlplane.datapath.maps import CLOCK_COARSE, get_addr
from controlplane.datapath.sync import Syncer
from controlplane.datapath.syscall import prog_test_run
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, checksums_valid, tcp, udp
from tests.bpf.test_xdp_forward import REMOTE4, lan  # noqa: F401
from tests.bpf.test_xdp_forward import STATE as REMOTE_STATE
from tests.bpf.test_xdp_lb import CLIENT4, NODE4, STATE, XDP_DROP, XDP_PASS, XDP_TX

# short enough that a row can age an entry past them (the machine's uptime bounds a stamp)
SHORT = conntrack.Timeouts(tcp_new=10, tcp_est=300, tcp_close_wait=60, tcp_close=10, udp=30,
                           udp_stream=120)  # fmt: skip
TC_NEXT = 0xFFFFFFFF


def coarse_now() -> int:
    return time.clock_gettime_ns(CLOCK_COARSE)


def entries_of(maps, client: str, sport: int) -> list:
    """The flow's two entries: (key, value) of the forward one first."""
    found = []
    for table, k, v in [(t, k, v) for t in (maps.ct, maps.ct_new) for k, v in t.items()]:
        fwd = get_addr(k.saddr) == client and socket.ntohs(k.sport) == sport
        rev = get_addr(k.daddr) == client and socket.ntohs(k.dport) == sport
        if fwd or rev:
            found.append((0 if fwd else 1, table, k, v))
    return [(t, k, v) for _, t, k, v in sorted(found, key=lambda e: e[0])]


class Flow:
    """One connection from the client to the local NodePort backend (30080/TCP, 30053/UDP
    of tests/bpf/test_xdp_lb.py's STATE)."""

    def __init__(self, fds, maps, proto: str, sport: int) -> None:
        self.xdp_fd, self.tc_fd = fds
        self.maps, self.proto, self.sport = maps, proto, sport
        self.dport = 30080 if proto == "tcp" else 30053
        self.backend: tuple[str, int] | None = None

    def client(self, flags: str = "A") -> int:
        pkt = (tcp(CLIENT4, self.sport, NODE4, self.dport, flags=flags) if self.proto == "tcp"
               else udp(CLIENT4, self.sport, NODE4, self.dport))  # fmt: skip
        out = prog_test_run(self.xdp_fd, bytes(pkt))
        got = Ether(out.data)
        l4 = got[TCP] if TCP in got else got[UDP]
        if out.retval == XDP_PASS and got[IP].dst != NODE4:
            self.backend = (got[IP].dst, l4.dport)
        return out.retval

    def from_backend(self, flags: str = "A") -> bool:
        """The backend's packet to the client: whether tc_lb rewrote it as the Service's."""
        assert self.backend, "the flow never reached a backend"
        address, port = self.backend
        l4 = (TCP(sport=port, dport=self.sport, flags=flags, seq=7000, ack=1001)
              if self.proto == "tcp" else UDP(sport=port, dport=self.sport))  # fmt: skip
        pkt = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=address, dst=CLIENT4) / l4 / b"x"
        out = prog_test_run(self.tc_fd, bytes(pkt))
        assert out.retval == TC_NEXT
        return Ether(out.data)[IP].src == NODE4

    def age(self, seconds: int) -> None:
        for table, k, v in entries_of(self.maps, CLIENT4, self.sport):
            v.stamp -= seconds * conntrack.NS
            table[k] = v

    def expired_by_the_control_plane(self) -> bool:
        (_, _, v), _ = entries_of(self.maps, CLIENT4, self.sport)
        proto = socket.IPPROTO_TCP if self.proto == "tcp" else socket.IPPROTO_UDP
        return conntrack.expired(v.flags, v.state, v.seen, v.stamp, proto, coarse_now(), SHORT)


@pytest.fixture
def fds(xdp, tc, maps, dp_config):
    syncer = Syncer(maps, dataclasses.replace(dp_config, ct_timeouts=SHORT))
    syncer.sync(STATE, NODE4, "fd00:198::201")
    return xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd


# (description, protocol, steps, is the backend's next packet still the Service's?)
# steps: "c:FLAGS" the client's packet, "b:FLAGS" the backend's, a number: seconds pass
LIFE = [
    ("an answered SYN is established: it outlives the SYN timeout",
     "tcp", ["c:S", "b:SA", "c:A", 11], True),
    ("an unanswered SYN is over after the SYN timeout: its late answer is not rewritten",
     "tcp", ["c:S", 11], False),
    ("a SYN-ACK the client never acknowledges (a spoofed SYN's) establishes nothing",
     "tcp", ["c:S", "b:SA", 11], False),
    ("an established flow lives while idle below its timeout",
     "tcp", ["c:S", "b:SA", "c:A", 290], True),
    ("an established flow idle past its timeout is over: the same client port's direct "
     "connection to the pod keeps its own addresses", "tcp", ["c:S", "b:SA", "c:A", 301], False),
    ("one FIN is a half-close: the backend still sends 11 s later",
     "tcp", ["c:S", "b:SA", "c:FA", 11], True),
    ("a half-closed flow idle past close-wait is over",
     "tcp", ["c:S", "b:SA", "c:FA", 61], False),
    ("a FIN each way closes: over after the close timeout",
     "tcp", ["c:S", "b:SA", "c:FA", "b:FA", "c:A", 11], False),
    ("a FIN each way, within the close timeout: the last ACKs are still rewritten",
     "tcp", ["c:S", "b:SA", "c:FA", "b:FA", 5], True),
    ("a RST closes: 10 s later the tuple is free",
     "tcp", ["c:S", "b:SA", "c:A", "c:R", 11], False),
    ("the backend's RST closes too", "tcp", ["c:S", "b:SA", "c:A", "b:R", 11], False),
    ("a forged RST after which both sides go on talking closes nothing",
     "tcp", ["c:S", "b:SA", "c:A", "c:R", "c:A", "b:A", 11], True),
    ("after a real RST only in-flight data of one side follows: still closed",
     "tcp", ["c:S", "b:SA", "c:A", "c:R", "b:A", 11], False),
    ("a new SYN on a closed flow's tuple starts a new flow",
     "tcp", ["c:S", "b:SA", "c:R", "c:S", "b:SA", "c:A", 11], True),
    ("a datagram without a reply lives 30 s", "udp", ["c:", 29], True),
    ("... and not longer", "udp", ["c:", 31], False),
    ("a replied UDP flow lives 120 s idle", "udp", ["c:", "b:", 119], True),
    ("... and not longer", "udp", ["c:", "b:", 121], False),
]  # fmt: skip


@pytest.mark.parametrize("description,proto,steps,lives", LIFE, ids=[r[0] for r in LIFE])
def test_a_flow_lives_as_netfilter_would_keep_it(fds, maps, description, proto, steps, lives):
    flow = Flow(fds, maps, proto, 41000 + LIFE.index(next(r for r in LIFE if r[0] == description)))
    for step in steps:
        if isinstance(step, int):
            flow.age(step)
            continue
        side, flags = step.split(":")
        if side == "c":
            assert flow.client(flags) == XDP_PASS, step
        else:
            flow.from_backend(flags)
    assert flow.expired_by_the_control_plane() is not lives
    assert flow.from_backend("A") is lives


def test_states_and_sightings_are_the_same_in_both_entries(fds, maps):
    flow = Flow(fds, maps, "tcp", 42000)
    flow.client("S")
    (_, _, fwd), (_, _, rev) = entries_of(maps, CLIENT4, 42000)
    assert (fwd.state, rev.state) == (conntrack.NEW, conntrack.NEW)
    flow.from_backend("SA")
    flow.client("FA")
    (_, _, fwd), (_, _, rev) = entries_of(maps, CLIENT4, 42000)
    assert fwd.state == rev.state == conntrack.EST
    assert fwd.seen == rev.seen == conntrack.S_FIN_FWD | conntrack.S_SYNACK
    assert not (fwd.flags | rev.flags) & conntrack.F_CLOSING


def test_stray_segments_to_a_local_backend_open_nothing_but_a_pickup(fds, maps):
    """A RST of no known flow is dropped and opens nothing; an ACK (a flow whose entry was
    lost, or a takeover's) is delivered and tracked as unconfirmed, so that it goes after the
    SYN timeout unless the backend answers."""
    before = maps.reason_counts()["drop_not_syn"]
    flow = Flow(fds, maps, "tcp", 42100)
    assert flow.client("R") == XDP_DROP
    assert maps.reason_counts()["drop_not_syn"] - before == 1
    assert not entries_of(maps, CLIENT4, 42100)
    assert flow.client("A") == XDP_PASS
    (_, _, fwd), _ = entries_of(maps, CLIENT4, 42100)
    assert fwd.state == conntrack.NEW


@pytest.fixture
def remote(xdp, maps, dp_config, lan):  # noqa: F811 (the fixture imported above)
    """Remote backends with only four SNAT ports, so that a fifth flow needs a freed one."""
    syncer = Syncer(maps, dataclasses.replace(dp_config, ct_timeouts=SHORT,
                                              snat_ports=(61000, 61003)))  # fmt: skip
    syncer.sync(REMOTE_STATE, NODE4, "fd00:198::201")
    _, ifindex, _ = lan
    fd = xdp.functions["xdp_lb"].fd
    return lambda pkt: prog_test_run(fd, bytes(pkt), ifindex=ifindex)


def _open(run, client: str, sport: int) -> int:
    out = run(tcp(client, sport, NODE4, 30080, flags="S"))
    assert out.retval == XDP_TX, out.retval
    return Ether(out.data)[TCP].sport


def _reply(run, port: int, client_port: int, flags: str) -> None:
    """The remote backend's packet to the node's SNAT port, through xdp_lb on the uplink."""
    pkt = tcp(REMOTE4, 8080, NODE4, port, flags=flags)
    out = run(pkt)
    assert out.retval == XDP_TX and Ether(out.data)[TCP].dport == client_port


@pytest.mark.parametrize(
    "closing,freed",
    [
        (["c:FA"], False),  # a half-close holds the port
        (["c:R"], True),
        (["c:FA", "b:FA"], True),
        ([], False),
    ],
    ids=["half-closed", "reset", "both FINs", "established"],
)
def test_a_snat_port_is_free_only_once_its_flow_is_over(remote, maps, closing, freed):
    ports = {_open(remote, f"203.0.113.{i}", 43000) for i in range(4)}
    assert ports == {61000, 61001, 61002, 61003}
    first = _open(remote, "203.0.113.0", 43000)  # the same flow: its entry, its port
    for i in range(4):  # every handshake completes: established flows
        port = _open(remote, f"203.0.113.{i}", 43000)
        _reply(remote, port, 43000, "SA")
        remote(tcp(f"203.0.113.{i}", 43000, NODE4, 30080, flags="A"))
    for step in closing:
        side, flags = step.split(":")
        if side == "c":
            remote(tcp("203.0.113.0", 43000, NODE4, 30080, flags=flags))
        else:
            _reply(remote, first, 43000, flags)
    for table in (maps.ct, maps.ct_new):  # 11 s pass
        for k, v in table.items():
            v.stamp -= 11 * conntrack.NS
            table[k] = v
    before = maps.reason_counts()["drop_snat_exhausted"]
    out = remote(tcp("203.0.113.50", 44000, NODE4, 30080, flags="S"))
    if freed:
        assert out.retval == XDP_TX and Ether(out.data)[TCP].sport == first
    else:
        assert out.retval == XDP_DROP
        assert maps.reason_counts()["drop_snat_exhausted"] - before == 1


def test_stray_acks_and_rsts_to_a_remote_backend_take_no_snat_port(remote, maps):
    before = maps.reason_counts()["drop_not_syn"]
    for i, flags in enumerate(["A", "R", "RA", "PA", "FA", "SA"]):
        assert remote(tcp("203.0.113.60", 45000 + i, NODE4, 30080, flags=flags)).retval == XDP_DROP
    assert maps.reason_counts()["drop_not_syn"] - before == 6
    assert not list(maps.ct.items()) and not list(maps.ct_new.items())


def test_the_collector_deletes_exactly_the_flows_that_are_over(fds, maps):
    """Flows in every state, some aged past their timeout: one pass deletes both entries of
    each flow that is over and nothing else, and the live ones still carry traffic."""
    cases = [  # (steps, seconds passed, over?)
        (["c:S"], 11, True),
        (["c:S"], 5, False),
        (["c:S", "b:SA", "c:A"], 301, True),
        (["c:S", "b:SA", "c:A"], 200, False),
        (["c:S", "b:SA", "c:FA", "b:FA"], 11, True),
        (["c:S", "b:SA", "c:FA"], 11, False),
    ]
    flows = []
    for i, (steps, seconds, _) in enumerate(cases):
        flow = Flow(fds, maps, "tcp", 46000 + i)
        for step in steps:
            side, flags = step.split(":")
            flow.client(flags) if side == "c" else flow.from_backend(flags)
        flow.age(seconds)
        flows.append(flow)
    done = conntrack.collect(maps.ct, SHORT, coarse_now)
    pending = conntrack.collect(maps.ct_new, SHORT, coarse_now)
    done.scanned += pending.scanned
    done.deleted += pending.deleted
    over = sum(1 for *_, gone in cases if gone)
    print(f"collector: {done.scanned} entries scanned, {done.deleted} deleted "
          f"in {done.seconds * 1000:.2f} ms")  # fmt: skip
    assert (done.scanned, done.deleted) == (2 * len(cases), 2 * over)
    for flow, (*_, gone) in zip(flows, cases, strict=True):
        assert bool(entries_of(maps, CLIENT4, flow.sport)) is not gone
        if not gone:
            assert flow.from_backend("A")


def test_unanswered_flows_wait_apart_and_move_when_answered(fds, maps):
    flow = Flow(fds, maps, "tcp", 47000)
    flow.client("S")
    assert [t for t, _, _ in entries_of(maps, CLIENT4, 47000)] == [maps.ct_new, maps.ct_new]
    flow.from_backend("SA")  # answered, but a spoofer's SYN is answered too
    assert [t for t, _, _ in entries_of(maps, CLIENT4, 47000)] == [maps.ct_new, maps.ct_new]
    flow.client("A")  # the handshake's last step
    assert [t for t, _, _ in entries_of(maps, CLIENT4, 47000)] == [maps.ct, maps.ct]
    assert flow.client("A") == XDP_PASS and flow.from_backend("A")


def with_checksum(frame: bytearray) -> None:
    """Recomputes the TCP checksum of an IPv4 frame (no options) in place."""
    from controlplane.l2.announce import checksum

    frame[50:52] = b"\0\0"
    segment = bytes(frame[34:])
    pseudo = bytes(frame[26:34]) + bytes([0, 6]) + len(segment).to_bytes(2, "big")
    frame[50:52] = checksum(pseudo + segment).to_bytes(2, "big")


def test_a_syn_flood_larger_than_the_table_evicts_no_established_flow(fds, maps):
    """More spoofed SYNs than the whole conntrack table holds: they evict each other in the
    table of unanswered flows, and the established flow keeps its entries and its backend."""
    flow = Flow(fds, maps, "tcp", 47100)
    flow.client("S")
    flow.from_backend("SA")
    flow.client("A")
    backend = flow.backend
    template = bytearray(bytes(tcp("198.18.0.1", 1, NODE4, 30080, flags="S")))
    xdp_fd = fds[0]
    flood = maps.ct.max_entries // 2 + 1000  # flows: more entries than xlb_ct has
    for i in range(flood):
        template[34:36] = (i % 60000 + 1024).to_bytes(2, "big")  # the TCP source port
        template[28] = i // 60000 + 1  # the source address's third byte (198.18.x.1)
        with_checksum(template)  # (a flooder's SYNs pass the checksum check too)
        out = prog_test_run(xdp_fd, bytes(template))
        assert out.retval == XDP_PASS
    print(f"{flood} spoofed SYNs: {len(maps.ct_new.items())} unanswered entries kept, "
          f"{len(maps.ct.items())} established")  # fmt: skip
    assert [t for t, _, _ in entries_of(maps, CLIENT4, 47100)] == [maps.ct, maps.ct]
    assert flow.client("A") == XDP_PASS and flow.backend == backend and flow.from_backend("A")


def test_when_every_snat_port_is_held_by_unanswered_syns_the_oldest_gives_its_up(remote, maps):
    """Four SNAT ports, four spoofed SYNs nobody answers: a second on, a real client's SYN
    takes the port of the oldest (counted), whose entries go; answered flows are never
    taken from."""
    for i in range(4):
        _open(remote, f"203.0.113.{i}", 48000)
    for table in (maps.ct, maps.ct_new):  # 1.5 s pass
        for k, v in table.items():
            v.stamp -= int(1.5 * conntrack.NS)
            table[k] = v
    before = maps.reason_counts()["snat_reclaimed"]
    port = _open(remote, "203.0.113.50", 48001)
    assert maps.reason_counts()["snat_reclaimed"] - before == 1
    _reply(remote, port, 48001, "SA")  # the backend's answer reaches the new client
    remote(tcp("203.0.113.50", 48001, NODE4, 30080, flags="A"))
    assert len(maps.ct_new.items()) == 6 and len(maps.ct.items()) == 2  # the old flow went
    for k, v in maps.ct.items():  # answered: it keeps its port whatever its age
        v.stamp -= int(1.5 * conntrack.NS)
        maps.ct[k] = v
    for table in (maps.ct_new,):
        for k, v in table.items():
            v.stamp = coarse_now()  # the three left are fresh
            table[k] = v
    assert remote(tcp("203.0.113.60", 48002, NODE4, 30080, flags="S")).retval == XDP_DROP


def test_one_client_port_to_two_frontends_of_one_backend_gets_each_its_own_replies(
    xdp, tc, maps, dp_config
):
    """Both flows would reply on one tuple (backend -> client:port): an endpoint-independent
    NAT in front of clients sends one source port to a NodePort and a LoadBalancer IP of one
    Service alike. As netfilter does, the second flow's source port is remapped (its address
    kept): each flow's replies leave as its own frontend, to the client's own port. Before,
    the newer flow took the tuple and the older one's replies left as the newer frontend."""
    from tests.bpf.test_xdp_lb import frontend, local

    state = dataclasses.replace(
        STATE,
        frontends=(*STATE.frontends, frontend(NODE4, 30081, "TCP", [local("10.244.1.5", 8080)])),
    )
    Syncer(maps, dataclasses.replace(dp_config, ct_timeouts=SHORT)).sync(
        state, NODE4, "fd00:198::201"
    )
    xdp_fd, tc_fd = fds = (xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd)
    before = maps.reason_counts()["port_remapped"]
    first = Flow(fds, maps, "tcp", 49000)  # to 30080, established and open
    for step in ("c:S", "b:SA", "c:A"):
        side, flags = step.split(":")
        first.client(flags) if side == "c" else first.from_backend(flags)
    syn = tcp(CLIENT4, 49000, NODE4, 30081, flags="S")
    out = prog_test_run(xdp_fd, bytes(syn))
    delivered = Ether(out.data)
    assert out.retval == XDP_PASS and (delivered[IP].dst, delivered[TCP].dport) == first.backend
    remapped = delivered[TCP].sport
    assert delivered[IP].src == CLIENT4 and remapped != 49000  # the address kept, the port not
    assert maps.reason_counts()["port_remapped"] - before == 1
    assert checksums_valid(out.data)

    address, port = first.backend

    def reply(dport: int) -> Ether:
        flags = "SA" if dport == remapped else "A"
        pkt = (Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=address, dst=CLIENT4)
               / TCP(sport=port, dport=dport, flags=flags))  # fmt: skip
        got = prog_test_run(tc_fd, bytes(pkt))
        assert checksums_valid(got.data)
        return Ether(got.data)

    new = reply(remapped)
    assert (new[IP].src, new[TCP].sport, new[TCP].dport) == (NODE4, 30081, 49000)
    old = reply(49000)
    assert (old[IP].src, old[TCP].sport, old[TCP].dport) == (NODE4, 30080, 49000)
    # and the second flow's client packets go on with the remapped port
    ack = Ether(prog_test_run(xdp_fd, bytes(tcp(CLIENT4, 49000, NODE4, 30081, flags="A"))).data)
    assert ack[TCP].sport == remapped
