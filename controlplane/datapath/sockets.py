"""Connected UDP sockets that the socket hooks pointed at a backend that is gone: reset, as
kube-proxy deletes the conntrack entries of a removed UDP endpoint (its conntrack
reconciler), so that the application's next datagram does not go to a dead pod forever.

A socket connected through sock_lb holds its backend's address itself: there is no NAT
entry to delete, and no BPF program may re-point a connected socket. So the socket is
destroyed (SOCK_DESTROY, what `ss -K` does; Cilium uses bpf_sock_destroy): the
application's next call fails with ECONNABORTED, and its new socket goes through the hook to
a live backend. xlb_sock_rev names each socket (cookie), its frontend's protocol and its
network namespace (cookie). Destroying it happens inside that namespace: entering it needs
CAP_SYS_ADMIN and a view of it (/proc/<pid>/ns/net of the host's processes, /run/netns).
Without them nothing is reset, and `unreachable` says how many sockets stayed.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from .maps import Maps, get_addr, ntohs

SO_NETNS_COOKIE = 71  # asm-generic/socket.h (5.14+)
CLONE_NEWNET = 0x40000000
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY, SOCK_DESTROY = 20, 21
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2: family, protocol, ext, states
_ID_SIZE = 48  # inet_diag_sockid: ports, addresses, interface, cookie
_MSG_HEAD = 4  # inet_diag_msg: family, state, timer, retrans, then the id


def netns_cookie() -> int:
    """The cookie of this thread's network namespace, as bpf_get_netns_cookie names it (0
    where the kernel cannot say)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return 0


@dataclass
class Reconciled:
    stale: int = 0  # entries of sockets pointed at a backend that went
    destroyed: int = 0
    closed: int = 0  # their socket (or its namespace) was already gone: entry dropped
    unreachable: int = 0  # in a namespace this process may not enter
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def stale_sockets(maps: Maps, gone: set[tuple[int, str, int]]) -> dict[int, dict[int, list]]:
    """netns cookie -> socket cookie -> the xlb_sock_rev keys of the UDP sockets that one of
    these frontends (by id) pointed at one of the backends it lost. (An entry outlives its
    socket until the LRU takes it: a closed socket's may be among them.)"""
    out: dict[int, dict[int, list]] = {}
    if not gone:
        return out
    for key, rev in maps.tables["xlb_sock_rev"].items():
        lost = (int(rev.svc), get_addr(key.addr), ntohs(key.port)) in gone
        if lost and rev.proto == socket.IPPROTO_UDP:
            out.setdefault(int(rev.netns), {}).setdefault(int(key.cookie), []).append(key)
    return out


def namespaces() -> list[str]:
    """Every network namespace this process can name, once each: the named ones, then those
    of the processes it can see."""
    seen, out = set(), []
    for path in sorted(glob.glob("/run/netns/*")) + glob.glob("/proc/[0-9]*/ns/net"):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                out.append(path)
    return out


def _inside(path: str, work):
    """work() run in a thread that entered the network namespace at path; its result, or
    the OSError that stopped it."""
    result: list = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            result.append(exc)
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result.append(OSError(err, os.strerror(err)))
                return
            result.append(work())
        except OSError as exc:
            result.append(exc)
        finally:
            os.close(fd)

    t = threading.Thread(target=run, name="netns", daemon=True)
    t.start()
    t.join(10)
    return result[0] if result else OSError(f"{path}: no answer")


def _request(kind: int, flags: int, family: int, states: int, sock_id: bytes) -> bytes:
    body = _REQ.pack(family, socket.IPPROTO_UDP, 0, states) + sock_id
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, 1, 0) + body


def _messages(data: bytes):
    at = 0
    while at + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, at)
        if length < _NLMSG.size:
            return
        yield kind, data[at + _NLMSG.size : at + length]
        at += (length + 3) & ~3


def _udp_ids(nl: socket.socket, family: int) -> list[bytes]:
    """Every UDP socket of this namespace and family, as its inet_diag_sockid."""
    nl.send(_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, 0xFFFFFFFF,
                     bytes(_ID_SIZE)))  # fmt: skip
    out = []
    while True:
        for kind, body in _messages(nl.recv(65536)):
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", body)
                raise OSError(-err, os.strerror(-err))
            out.append(body[_MSG_HEAD : _MSG_HEAD + _ID_SIZE])


def _cookie(sock_id: bytes) -> int:
    lo, hi = struct.unpack_from("=II", sock_id, _ID_SIZE - 8)
    return lo | hi << 32


def _destroy_here(cookies: set[int]) -> set[int]:
    """Destroys the UDP sockets of this namespace with these cookies; the cookies of those
    that went (the others are closed already)."""
    done: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(5)
        for family in (socket.AF_INET, socket.AF_INET6):
            for sock_id in _udp_ids(nl, family):
                if (cookie := _cookie(sock_id)) not in cookies:
                    continue
                nl.send(_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, 0xFFFFFFFF,
                                 sock_id))  # fmt: skip
                for kind, body in _messages(nl.recv(65536)):
                    if kind == NLMSG_ERROR and struct.unpack_from("=i", body)[0] == 0:
                        done.add(cookie)
    return done


def reconcile(maps: Maps, gone: set[tuple[int, str, int]]) -> Reconciled:
    """Resets the connected UDP sockets that these frontends (id) pointed at these backends
    (address, port), in every namespace that holds one, and drops the entries of the ones
    reset or already closed. Where no namespace could be entered at all (no CAP_SYS_ADMIN),
    every entry counts as unreachable and stays."""
    start = time.perf_counter()
    res = Reconciled()
    wanted = stale_sockets(maps, gone)
    res.stale = sum(len(c) for c in wanted.values())
    settled: list = []  # the xlb_sock_rev keys to drop
    entered = False
    for path in namespaces() if wanted else ():
        cookie = _inside(path, netns_cookie)
        if not isinstance(cookie, int):
            continue
        entered = True
        if cookie not in wanted:
            continue
        sockets = wanted.pop(cookie)
        done = _inside(path, lambda c=set(sockets): _destroy_here(c))
        if isinstance(done, OSError):
            res.errors.append(f"{path}: {done}")
            res.unreachable += len(sockets)
            continue
        res.destroyed += len(done)
        res.closed += len(sockets) - len(done)
        settled += [k for keys in sockets.values() for k in keys]
        if not wanted:
            break
    left = sum(len(c) for c in wanted.values())
    if entered:  # their namespaces are gone (the pods deleted): so are the sockets
        res.closed += left
        settled += [k for by_cookie in wanted.values() for keys in by_cookie.values() for k in keys]
    else:
        res.unreachable += left
    table = maps.tables["xlb_sock_rev"]
    for key in settled:
        with contextlib.suppress(KeyError):
            del table[key]
    res.seconds = time.perf_counter() - start
    return res
