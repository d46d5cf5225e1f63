"""sock_lb with real sockets: clients in a cgroup carrying the hooks reach Services by their
ClusterIP; the backends are real listeners in a network namespace."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import select
import socket
import subprocess
import sys
import threading

import pytest

from controlplane.datapath.attach import attach_sock, cgroup2_root, detach_sock
from controlplane.datapath.constants import value
from controlplane.datapath.maps import ALG_NUM
from controlplane.datapath.programs import compile_program
from controlplane.lab.processes import join_cgroup
from controlplane.model.objects import Protocol
from controlplane.model.state import (
    Algorithm,
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    NoBackend,
    Scope,
)
from tests.kernel import inside, netns, owned, reap, sh

B4 = ["10.244.1.5", "10.244.1.6"]
B6 = ["fd00:10:244:1::5", "fd00:10:244:1::6"]


def cluster_ip(address, port, proto, backends, **kw) -> Frontend:
    return Frontend(
        service=f"default/{address}-{port}",
        port_name="",
        kind=FrontendKind.CLUSTER_IP,
        scope=Scope.INTERNAL,
        address=address,
        port=port,
        protocol=Protocol(proto),
        backends=tuple(Backend(a, p) for a, p in backends),
        algorithm=kw.pop("algorithm", Algorithm.RANDOM),
        **kw,
    )


def lb_ip(address, port, proto, backends, ranges) -> Frontend:
    """A LoadBalancer IP as the node's own processes and pods reach it (scope internal)."""
    fe = cluster_ip(address, port, proto, backends, source_ranges=ranges)
    return dataclasses.replace(fe, kind=FrontendKind.LOAD_BALANCER)


POD_RANGES = ("10.244.1.0/24", "fd00:10:244:1::/64")  # the clients' own addresses
OTHER_RANGES = ("203.0.113.0/24", "2001:db8::/32")

STATE = DesiredState(
    frontends=(
        cluster_ip("10.96.0.10", 80, "TCP", [(a, 8080) for a in B4]),
        cluster_ip("10.96.0.10", 53, "UDP", [(a, 5353) for a in B4]),
        cluster_ip("fd00:10:96::10", 80, "TCP", [(a, 8080) for a in B6]),
        cluster_ip("fd00:10:96::10", 53, "UDP", [(a, 5353) for a in B6]),
        cluster_ip("10.96.0.11", 80, "TCP", []),
        cluster_ip("10.96.0.12", 80, "TCP", [], no_backend=NoBackend.DROP),
        cluster_ip("10.96.0.13", 80, "TCP", [(a, 8080) for a in B4], affinity_timeout=600),
        cluster_ip("10.96.0.14", 80, "TCP", [(a, 8080) for a in B4], algorithm=Algorithm.MAGLEV),
        lb_ip("192.168.198.240", 80, "TCP", [(a, 8080) for a in B4], POD_RANGES),
        lb_ip("192.168.198.241", 80, "TCP", [(a, 8080) for a in B4], OTHER_RANGES),
        lb_ip("192.168.198.241", 53, "UDP", [(a, 5353) for a in B4], OTHER_RANGES),
        lb_ip("fd00:198::240", 80, "TCP", [(a, 8080) for a in B6], POD_RANGES),
        lb_ip("fd00:198::241", 80, "TCP", [(a, 8080) for a in B6], OTHER_RANGES),
    ),
    cluster_ips=frozenset({f"10.96.0.{i}" for i in range(10, 15)} | {"fd00:10:96::10"}),
    service_cidrs=("10.96.0.0/16", "fd00:10:96::/112"),
)


def _serve(listeners: list[socket.socket], stop: threading.Event) -> None:
    """Each backend answers with its own address, so a client learns where it landed."""
    while not stop.is_set():
        ready, _, _ = select.select(listeners, [], [], 0.1)
        for s in ready:
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    with conn:
                        conn.sendall(f"{s.getsockname()[0]}\n".encode())
                else:
                    _, peer = s.recvfrom(100)
                    s.sendto(f"{s.getsockname()[0]}\n".encode(), peer)
            except OSError:
                continue


@pytest.fixture(scope="module")
def pod_net(xdp, dp_config):
    """A namespace with the backends listening, and a cgroup with the socket hooks attached."""
    program = compile_program("sock_lb.c", dp_config)
    reap(cgroup2_root(), "xlbt-")
    cgroup = os.path.join(cgroup2_root(), owned("xlbt-"))
    os.mkdir(cgroup)
    stop = threading.Event()
    listeners: list[socket.socket] = []
    try:
        with netns() as ns:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # no dummy driver on every kernel: a veth pair kept in the namespace holds the IPs
            sh("ip", "-n", ns, "link", "add", "pods", "type", "veth", "peer", "name", "pods-p")
            sh("ip", "-n", ns, "link", "set", "pods", "up")
            sh("ip", "-n", ns, "link", "set", "pods-p", "up")
            for a in B4:
                sh("ip", "-n", ns, "addr", "add", f"{a}/32", "dev", "pods")
            for a in B6:
                sh("ip", "-n", ns, "addr", "add", f"{a}/128", "dev", "pods", "nodad")
            with inside(ns):
                for a in B4 + B6:
                    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                    for kind, port in ((socket.SOCK_STREAM, 8080), (socket.SOCK_DGRAM, 5353)):
                        s = socket.socket(fam, kind)
                        s.bind((a, port))
                        if kind == socket.SOCK_STREAM:
                            s.listen(64)
                        listeners.append(s)
            server = threading.Thread(target=_serve, args=(listeners, stop), daemon=True)
            server.start()
            attach_sock(program, cgroup)
            yield ns, cgroup
            detach_sock(cgroup, program.pin_root)
            stop.set()
            server.join(2)
    finally:
        for s in listeners:
            s.close()
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
        program.cleanup()


@pytest.fixture
def client(pod_net, maps, syncer):
    syncer.sync(STATE)
    ns, cgroup = pod_net

    join = functools.partial(join_cgroup, cgroup)

    def run(code: str) -> list[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=20,
            preexec_fn=join,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    return run


TCP_CLIENT = """
import socket
s = socket.create_connection(({addr!r}, {port}), timeout=3)
peer = s.getpeername()
print(peer[0], peer[1], s.recv(100).decode().strip())
"""


@pytest.mark.parametrize("vip,backends", [("10.96.0.10", B4), ("fd00:10:96::10", B6)])
def test_tcp_connect_reaches_a_backend_and_getpeername_shows_the_service(client, vip, backends):
    seen = set()
    for _ in range(64):  # random over both: all 64 on one backend is a 1 in 2^63 chance
        peer, port, landed = client(TCP_CLIENT.format(addr=vip, port=80))
        assert (peer, port) == (vip, "80")
        seen.add(landed)
        if seen == set(backends):
            break
    assert seen == set(backends)


def test_connected_udp(client):
    code = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("10.96.0.10", 53))
s.send(b"q")
data = s.recv(100).decode().strip()
peer = s.getpeername()
print(peer[0], peer[1], data)
"""
    peer, port, landed = client(code)
    assert (peer, port) == ("10.96.0.10", "53") and landed in B4


@pytest.mark.parametrize("vip,backends", [("10.96.0.10", B4), ("fd00:10:96::10", B6)])
def test_unconnected_udp_reply_comes_from_the_service(client, vip, backends):
    fam = "AF_INET6" if ":" in vip else "AF_INET"
    code = f"""
import socket
s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"q", ({vip!r}, 53))
data, peer = s.recvfrom(100)
print(peer[0], peer[1], data.decode().strip())
"""
    peer, port, landed = client(code)
    assert (peer, port) == (vip, "53") and landed in backends


def test_no_backend_is_refused_at_once(client):
    code = """
import errno, socket, time
for addr in ("10.96.0.11", "10.96.0.12"):
    t = time.monotonic()
    try:
        socket.create_connection((addr, 80), timeout=3)
        print("connected", 0)
    except OSError as e:
        print(errno.errorcode[e.errno], round((time.monotonic() - t) * 1000))
"""
    refused, ms1, unreachable, ms2 = client(code)
    assert refused == "ECONNREFUSED" and unreachable == "EHOSTUNREACH"
    assert int(ms1) < 100 and int(ms2) < 100


SERVICE_SPACE = """
import errno, socket, time
for addr, port, kind in {probes!r}:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        s.connect((addr, port)) if kind == "tcp" else s.sendto(b"q", (addr, port))
        print(addr, port, kind, "ok", 0)
    except OSError as e:
        print(addr, port, kind, errno.errorcode[e.errno], round((time.monotonic() - t) * 1000))
"""


@pytest.mark.parametrize(
    "addr,port,kind,expected",
    [
        # kube-proxy nftables: "Reject traffic to invalid ports of ClusterIPs"
        ("10.96.0.10", 81, "tcp", "ECONNREFUSED"),
        ("10.96.0.10", 54, "udp", "ECONNREFUSED"),
        ("10.96.0.10", 53, "tcp", "ECONNREFUSED"),  # served for UDP only
        ("fd00:10:96::10", 81, "tcp", "ECONNREFUSED"),
        # "Drop traffic to unallocated ClusterIPs": refused at connect(), never routed out
        ("10.96.0.99", 80, "tcp", "EHOSTUNREACH"),
        ("10.96.200.1", 53, "udp", "EHOSTUNREACH"),
        ("fd00:10:96::99", 80, "tcp", "EHOSTUNREACH"),
        # outside the service CIDRs: left to the routing (this namespace has no route there)
        ("10.97.0.10", 81, "tcp", "ENETUNREACH"),
        ("fd00:10:97::10", 81, "tcp", "ENETUNREACH"),
    ],
)
def test_the_service_address_space_answers_what_no_frontend_serves(
    client, addr, port, kind, expected
):
    (line,) = [client(SERVICE_SPACE.format(probes=[(addr, port, kind)]))]
    assert line[3] == expected, line
    print(f"{addr}:{port}/{kind}: {line[3]} in {line[4]} ms")
    assert int(line[4]) < 1000  # at once, not after a timeout


def test_the_service_address_space_is_counted(client, maps):
    before = maps.reason_counts()
    client(SERVICE_SPACE.format(probes=[("10.96.0.10", 81, "tcp"), ("10.96.0.99", 80, "tcp")]))
    after = maps.reason_counts()
    assert after["reject_cluster_port"] - before["reject_cluster_port"] == 1
    assert after["drop_unallocated"] - before["drop_unallocated"] == 1


RANGED = """
import errno, socket, sys
addr, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
try:
    if kind == "tcp":
        s = socket.create_connection((addr, port), timeout=1)
        print("answered", s.recv(100).decode().strip())
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(b"q", (addr, port))
        print("answered", s.recvfrom(100)[0].decode().strip())
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout", "-")
"""


@pytest.mark.parametrize(
    "addr,port,kind,allowed",
    [
        ("192.168.198.240", 80, "tcp", True),  # the client's address is in the ranges
        ("192.168.198.241", 80, "tcp", False),  # it is not: kube-proxy drops, so do we
        ("192.168.198.241", 53, "udp", False),
        ("fd00:198::240", 80, "tcp", True),
        ("fd00:198::241", 80, "tcp", False),
    ],
)
def test_source_ranges_apply_to_the_nodes_own_clients(client, maps, addr, port, kind, allowed):
    """loadBalancerSourceRanges from a pod or the node (kube-proxy's firewall-check in output
    and prerouting): judged by the source address the packets leave with, which connect()
    does not know yet."""
    before = maps.reason_counts()["drop_source_range"]
    code = RANGED.replace(
        "sys.argv[1], int(sys.argv[2]), sys.argv[3]", f"{addr!r}, {port}, {kind!r}"
    )
    what, landed = client(code)
    print(f"{addr}:{port}/{kind}: {what} {landed}")
    assert (what == "answered") is allowed, (what, landed)
    dropped = maps.reason_counts()["drop_source_range"] - before
    assert (dropped > 0) is not allowed, dropped


def test_a_socket_sent_to_a_ranged_frontend_is_not_judged_by_it_afterwards(client):
    """One UDP socket: a datagram to a frontend whose ranges exclude it (dropped), then one
    to a ClusterIP without ranges, which must get through."""
    code = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
try:
    s.sendto(b"q", ("192.168.198.241", 53))
    s.recvfrom(100)
    print("answered")
except OSError:
    print("dropped")
s.sendto(b"q", ("10.96.0.10", 53))
print(s.recvfrom(100)[0].decode().strip())
"""
    first, second = client(code)
    assert first == "dropped" and second in B4


def test_session_affinity_keeps_a_pod_on_one_backend(client):
    code = """
import socket
for _ in range(10):
    s = socket.create_connection(("10.96.0.13", 80), timeout=3)
    print(s.recv(100).decode().strip())
"""
    assert len(set(client(code))) == 1


COOKIE_CLIENT = """
import socket
s = socket.create_connection(({addr!r}, {port}), timeout=3)
cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little")  # SO_COOKIE
print(cookie, s.recv(100).decode().strip())
"""


def _hash_u64(v: int) -> int:
    """bpf/lib/maglev.h's xlb_hash_u64 (murmur3 rounds over the two halves), in Python."""
    m32 = 0xFFFFFFFF

    def mix(h: int, k: int) -> int:
        k = (k * 0xCC9E2D51) & m32
        k = ((k << 15) | (k >> 17)) & m32
        k = (k * 0x1B873593) & m32
        h ^= k
        h = ((h << 13) | (h >> 19)) & m32
        return (h * 5 + 0xE6546B64) & m32

    def fmix(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & m32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & m32
        return h ^ (h >> 16)

    return fmix(mix(mix(value("XLB_HASH_SEED"), v & m32), v >> 32) ^ 8)


def test_maglev_for_connect_time_choices(client, maps, dp_config):
    """Each connection's backend is the one the group's Maglev table holds at its socket's
    hash (the socket cookie's): computed here from the table the kernel holds, so that random
    or source hash (or the slots' flow-hash fallback), which pick elsewhere, fail."""
    v = maps.read_services()[("10.96.0.14", 80, Protocol.TCP, Scope.INTERNAL)]
    assert v.algorithm == ALG_NUM[Algorithm.MAGLEV]
    backends = maps.read_backends()
    table = maps.maglev.read(v.group)
    assert table is not None and len(table) == 251  # 3 backends: the smallest size
    seen = set()
    for _ in range(10):
        cookie, landed = client(COOKIE_CLIENT.format(addr="10.96.0.14", port=80))
        want = backends[table[_hash_u64(int(cookie)) % len(table)]].address
        assert landed == want, (cookie, landed, want)
        seen.add(landed)
    assert len(seen) > 1  # the sockets were spread over the ring


def test_other_destinations_are_untouched(client):
    peer, port, landed = client(TCP_CLIENT.format(addr="10.244.1.6", port=8080))
    assert (peer, landed) == ("10.244.1.6", "10.244.1.6")


HELD_UDP = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("10.96.0.10", 53))
s.send(b"q")
print(s.recv(100).decode().strip(), flush=True)
sys.stdin.readline()  # the backend is removed meanwhile
try:
    s.send(b"q")
    print(s.recv(100).decode().strip())
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # what an application does next
t.settimeout(2)
t.connect(("10.96.0.10", 53))
t.send(b"q")
print(t.recv(100).decode().strip())
"""


@pytest.mark.parametrize("reset", [True, False], ids=["reconciled", "control: not reconciled"])
def test_a_connected_udp_socket_to_a_removed_backend_is_reset(pod_net, maps, syncer, reset):
    """kube-proxy clears the conntrack of a removed UDP endpoint, so a client's next datagram
    finds a live one. A socket connected through the hooks holds its backend itself; the
    reconciler resets it (SOCK_DESTROY in its network namespace), and the application's new
    socket lands on a live backend. The control shows what happens without: the old socket
    keeps talking to the removed backend (its listener here is still up)."""
    from controlplane.datapath import sockets

    ns, cgroup = pod_net
    syncer.sync(STATE)

    join = functools.partial(join_cgroup, cgroup)

    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HELD_UDP],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=join)  # fmt: skip
    try:
        first = p.stdout.readline().strip()
        assert first in B4
        live = [b for b in B4 if b != first]
        state = dataclasses.replace(STATE, frontends=tuple(
            dataclasses.replace(fe, backends=tuple(b for b in fe.backends if b.address != first))
            if fe.key == ("10.96.0.10", 53, "UDP", Scope.INTERNAL) else fe
            for fe in STATE.frontends
        ))  # fmt: skip
        svc_id = syncer.frontends[("10.96.0.10", 53, "UDP", Scope.INTERNAL)].id
        res = syncer.sync(state)
        # lost by this frontend only (the LoadBalancer IP on port 53 still has it)
        assert res.gone == {(svc_id, first, 5353)}
        done = sockets.reconcile(maps, res.gone) if reset else None
        out, _ = p.communicate("go\n", timeout=15)
    finally:
        p.kill()
    after, fresh = out.split()
    print(f"first {first}, the same socket after: {after}, a new socket: {fresh}; {done}")
    assert fresh in live
    if reset:
        # (entries of this frontend's sockets closed by earlier tests are dropped as closed)
        assert (done.destroyed, done.unreachable) == (1, 0) and done.stale >= 1, done
        assert done.stale == done.destroyed + done.closed
        assert after in ("ECONNABORTED", "EDESTADDRREQ"), after
    else:
        assert after == first  # the removed backend, still
