"""The conntrack's timeouts and when an entry is over, as bpf/lib/conntrack.h decides it: the
numbers come from maps.h (constants.py), and the rule is the C's xlb_ct_timeout and
xlb_ct_expired, which tests/bpf/test_conntrack.py holds this copy to, row by row, against the
programs themselves. The agent's collector uses it to delete what the kernel no longer
uses. Pure: no bcc, no kernel."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, fields

from .constants import prefixed, value

NS = value("XLB_NS_PER_SEC")
F_REVERSE = value("XLB_CT_F_REVERSE")
F_SNAT = value("XLB_CT_F_SNAT")
F_CLOSING = value("XLB_CT_F_CLOSING")
EST, NEW = value("XLB_CT_EST"), value("XLB_CT_NEW")
S_FIN_FWD, S_FIN_REV = value("XLB_CT_S_FIN_FWD"), value("XLB_CT_S_FIN_REV")
S_SYNACK = value("XLB_CT_S_SYNACK")
SLOTS = prefixed("XLB_CT_T_")  # timeout name -> its index in xlb_config.ct_timeout


@dataclass(frozen=True)
class Timeouts:
    """Seconds a flow lives without a packet, by state (kube-proxy's flag names where it has
    one). The defaults are maps.h's."""

    tcp_new: int = value("XLB_CT_DEFAULT_TCP_NEW")  # a SYN, no answer yet
    tcp_est: int = value("XLB_CT_DEFAULT_TCP_EST")  # --conntrack-tcp-timeout-established
    tcp_close_wait: int = value("XLB_CT_DEFAULT_TCP_CLOSE_WAIT")  # one side's FIN
    tcp_close: int = value("XLB_CT_DEFAULT_TCP_CLOSE")  # both FINs or a RST
    udp: int = value("XLB_CT_DEFAULT_UDP")  # --conntrack-udp-timeout: no reply yet
    udp_stream: int = value("XLB_CT_DEFAULT_UDP_STREAM")  # --conntrack-udp-timeout-stream

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or not 1 <= v <= 2**32 - 1:
                raise ValueError(f"conntrack timeout {f.name}: {v!r} is not 1 s to 136 years")

    def slots(self) -> list[int]:
        """The values in xlb_config.ct_timeout's order."""
        out = [0] * len(SLOTS)
        for name, index in SLOTS.items():
            out[index] = getattr(self, name)
        return out

    @classmethod
    def from_slots(cls, slots) -> Timeouts:
        """What the programs use for these config values (0: the default)."""
        default = cls()
        return cls(**{n: int(slots[i]) or getattr(default, n) for n, i in SLOTS.items()})


def timeout(flags: int, state: int, seen: int, proto: int, t: Timeouts) -> int:
    """xlb_ct_timeout: the seconds an entry in this state lives without a packet."""
    if proto == socket.IPPROTO_TCP:
        if flags & F_CLOSING:
            return t.tcp_close
        if state == NEW:
            return t.tcp_new
        if seen & (S_FIN_FWD | S_FIN_REV):
            return t.tcp_close_wait
        return t.tcp_est
    return t.udp if state == NEW else t.udp_stream


def expired(flags: int, state: int, seen: int, stamp: int, proto: int, now: int,
            t: Timeouts) -> bool:  # fmt: skip
    """xlb_ct_expired: no packet for the state's timeout (stamp and now in coarse ns)."""
    return now > stamp and now - stamp > timeout(flags, state, seen, proto, t) * NS


@dataclass
class Collected:
    """One collector pass: entries looked at, expired ones deleted, and how long it took."""

    scanned: int = 0
    deleted: int = 0
    seconds: float = 0.0


def collect(table, t: Timeouts, now_fn) -> Collected:
    """Deletes the entries of the pinned conntrack table that are over (the programs treat
    them as gone already; deleting them gives their slots back before LRU would). table is
    the pinned xlb_ct (pinned.PinnedTable); now_fn reads the coarse clock. Each candidate
    is read again just before it goes: a packet may have made a new flow of its tuple since
    the scan."""
    import time

    start = time.monotonic()
    out = Collected()
    over = []
    now = now_fn()
    for k, v in table.items_lookup_batch():  # 4,096 entries a syscall
        out.scanned += 1
        if expired(v.flags, v.state, v.seen, v.stamp, k.proto, now, t):
            over.append(k)
    now = now_fn()
    for k in over:
        v = table.lookup(k)
        if v is not None and expired(v.flags, v.state, v.seen, v.stamp, k.proto, now, t):
            with contextlib.suppress(KeyError):
                del table[k]
                out.deleted += 1
    out.seconds = time.monotonic() - start
    return out
