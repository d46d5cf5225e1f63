"""Reading the datapath's drop and reject events (bpf/lib/events.h) from the ring buffer
pinned beside the maps, without bcc: the ring is mmapped as the kernel lays it out
(kernel/bpf/ringbuf.c: a consumer page, a producer page, then the data pages mapped twice
so that a record never wraps), and read from the consumer position on.

`xlb monitor` prints them; each event names its flow as it arrived, its frontend and the
reason, in the names `xlb status` counts them by."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import constants
from .maps import REASONS
from .syscall import map_info, obj_get

PAGE = mmap.PAGESIZE
_BUSY, _DISCARD = 1 << 31, 1 << 30
_HEADER = 8  # u32 length (with the busy and discard bits), u32 page offset
# struct xlb_event: stamp, saddr, daddr, sport, dport, svc, ifindex, reason, proto, family, hook
EVENT = struct.Struct("<Q16s16sHHIIBBBB")
NO_SVC = constants.value("XLB_EVENT_NO_SVC")
HOOKS = {constants.value("XLB_HOOK_XDP"): "xdp", constants.value("XLB_HOOK_TC"): "tc"}


@dataclass(frozen=True)
class Event:
    stamp: float  # seconds, wall clock
    source: str
    sport: int
    destination: str
    dport: int
    protocol: str
    reason: str
    frontend: int | None
    ifindex: int
    hook: str

    def line(self, frontends: dict[int, str] | None = None) -> str:
        """One line, as `cilium monitor` prints a drop: when, why, where, the flow."""

        def hostport(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        when = (
            time.strftime("%H:%M:%S", time.localtime(self.stamp))
            + f".{int(self.stamp * 1000) % 1000:03d}"
        )
        front = ""
        if self.frontend is not None:
            name = (frontends or {}).get(self.frontend)
            front = f" frontend {name or self.frontend}"
        return (
            f"{when} {self.reason:<22} {self.hook} if {self.ifindex}{front}: {self.protocol} "
            f"{hostport(self.source, self.sport)} -> {hostport(self.destination, self.dport)}"
        )

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _address(raw: bytes, family: int) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def decode(record: bytes, wall_offset: float) -> Event:
    (stamp, saddr, daddr, sport, dport, svc, ifindex, reason, proto, family,
     hook) = EVENT.unpack_from(record)  # fmt: skip
    return Event(
        stamp=stamp / 1e9 + wall_offset,
        source=_address(saddr, family),
        sport=socket.ntohs(sport),
        destination=_address(daddr, family),
        dport=socket.ntohs(dport),
        protocol={6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}.get(proto, str(proto)),
        reason=REASONS[reason] if reason < len(REASONS) else f"reason {reason}",
        frontend=None if svc == NO_SVC else svc,
        ifindex=ifindex,
        hook=HOOKS.get(hook, str(hook)),
    )


class EventRing:
    """The pinned ring, opened for reading. Events are consumed: one reader at a time."""

    def __init__(self, pin_root: str) -> None:
        path = os.path.join(pin_root, "events")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no event ring (is the datapath loaded?)")
        self.fd = obj_get(path)
        self.size = map_info(self.fd).max_entries
        self.consumer = mmap.mmap(self.fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.producer = mmap.mmap(self.fd, PAGE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                  offset=PAGE)  # fmt: skip
        # the kernel stamps events with the monotonic clock
        self.wall_offset = time.time() - time.monotonic()

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        os.close(self.fd)

    def __enter__(self) -> EventRing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def drain(self) -> Iterator[Event]:
        """Every event written and not read yet."""
        cons = struct.unpack_from("<Q", self.consumer, 0)[0]
        prod = struct.unpack_from("<Q", self.producer, 0)[0]
        mask = self.size - 1
        while cons < prod:
            at = PAGE + (cons & mask)
            length = struct.unpack_from("<I", self.producer, at)[0]
            if length & _BUSY:
                break  # still being written
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD and size >= EVENT.size:
                yield decode(self.producer[at + _HEADER : at + _HEADER + EVENT.size],
                             self.wall_offset)  # fmt: skip
            cons += (size + _HEADER + 7) & ~7
            struct.pack_into("<Q", self.consumer, 0, cons)

    def follow(self, interval: float = 0.1) -> Iterator[Event]:
        """Events as they come, until the caller stops."""
        while True:
            yield from self.drain()
            time.sleep(interval)
