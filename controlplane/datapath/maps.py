"""Typed access to the pinned maps, through bcc's generated Key/Leaf types (maps.h is the one
source of every layout; nothing here restates a struct). Opened from the pins and their layout
(datapath/pinned.py), so no process that only reads and writes maps imports bcc."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..model.objects import Protocol
from ..model.state import Algorithm, Scope
from .constants import prefixed, value
from .maglev_tables import MaglevTables
from .pinned import PinnedTable, open_tables

PROTO_NUM = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
PROTO_NAME = {v: k for k, v in PROTO_NUM.items()}

# The numbers the programs use, from the C headers (constants.py): never copied by hand.
SCOPE_NUM = {s: value(f"XLB_SCOPE_{s.name}") for s in Scope}
SCOPE_NAME = {v: k for k, v in SCOPE_NUM.items()}
ALG_NUM = {a: value(f"XLB_ALG_{a.name}") for a in Algorithm}
ALG_NAME = {v: k for k, v in ALG_NUM.items()}

SVC_F_PRESERVE_CLIENT = value("XLB_SVC_F_PRESERVE_CLIENT")
SVC_F_DROP_EMPTY = value("XLB_SVC_F_DROP_EMPTY")
SVC_F_SOURCE_RANGES = value("XLB_SVC_F_SOURCE_RANGES")
SVC_F_DSR = value("XLB_SVC_F_DSR")
NET_CLUSTER_IP = value("XLB_NET_CLUSTER_IP")
NET_SERVICE_CIDR = value("XLB_NET_SERVICE_CIDR")
BE_F_LOCAL = value("XLB_BE_F_LOCAL")
BE_F_TERMINATING = value("XLB_BE_F_TERMINATING")
BE_F_NOT_SERVING = value("XLB_BE_F_NOT_SERVING")
BE_F_DSR = value("XLB_BE_F_DSR")
ANNOUNCE_GRACE_NS = value("XLB_ANNOUNCE_GRACE")  # the kernel answers while the beat is younger

CLOCK_COARSE = 6  # CLOCK_MONOTONIC_COARSE (uapi time.h): what bpf_ktime_get_coarse_ns reads

# The reasons a packet is not balanced (XLB_R_*), as the stats array indexes them.
REASONS = tuple(name for name in prefixed("XLB_R_") if name != "max")
assert len(REASONS) == value("XLB_R_MAX"), "XLB_R_* must number 0 .. XLB_R_MAX - 1"


_V4_MAPPED = bytes(10) + b"\xff\xff"


def addr_bytes(address: str) -> bytes:
    """16 bytes as the datapath stores an address: IPv4 as IPv4-mapped IPv6. (inet_pton,
    not ipaddress: a full sync converts a few hundred thousand addresses.)"""
    try:
        if ":" in address:
            return socket.inet_pton(socket.AF_INET6, address)
        return _V4_MAPPED + socket.inet_pton(socket.AF_INET, address)
    except OSError:
        raise ValueError(f"{address!r} is not an IP address") from None


def addr_text(raw: bytes) -> str:
    """The address as addr_bytes took it (inet_ntop: a restarted agent reads 100,000)."""
    raw = bytes(raw)
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    if raw[:12] == bytes(12):  # ::a.b.c.d, which inet_ntop would print that way
        return str(ipaddress.IPv6Address(raw))
    return socket.inet_ntop(socket.AF_INET6, raw)


def set_addr(field: Any, address: str) -> None:
    ct.memmove(ct.addressof(field), addr_bytes(address), 16)


def get_addr(field: Any) -> str:
    return addr_text(ct.string_at(ct.addressof(field), 16))


def htons(port: int) -> int:
    return socket.htons(port)


def ntohs(port: int) -> int:
    return socket.ntohs(port)


@dataclass(frozen=True, slots=True)
class SvcValue:
    """The service entry as the sync reasons about it; written as xlb_svc."""

    id: int
    group: int
    affinity_timeout: int
    count: int
    algorithm: int
    flags: int


@dataclass(frozen=True, slots=True)
class BackendValue:
    address: str
    port: int
    flags: int


def layout(ctype: Any, codes: dict[str, str]) -> struct.Struct:
    """A struct.Struct packing the named fields of one of bcc's generated ctypes types at
    their offsets (everything else zero), so that bulk writes can be built as bytes while
    maps.h stays the one source of the layout: a field that moved or changed size fails here."""
    fmt, pos = "=", 0
    for name, *_ in ctype._fields_:
        if name not in codes:
            continue
        f = getattr(ctype, name)
        if f.offset < pos:
            raise ValueError(f"{ctype.__name__}.{name}: fields out of order")
        fmt += f"{f.offset - pos}x" if f.offset > pos else ""
        fmt += codes[name]
        pos = f.offset + struct.calcsize("=" + codes[name])
        if pos != f.offset + f.size:
            raise ValueError(f"{ctype.__name__}.{name}: {f.size} bytes, not {codes[name]!r}")
    size = ct.sizeof(ctype)
    return struct.Struct(fmt + (f"{size - pos}x" if size > pos else ""))


U32 = struct.Struct("=I").pack  # a u32 key or value as the kernel stores it


class Maps:
    """The pinned maps under one pin root, as the last compile laid them out."""

    def __init__(self, tables: dict[str, PinnedTable], pin_root: str) -> None:
        self.tables, self.pin_root = tables, pin_root
        t = tables.__getitem__
        self.services = t("xlb_services")
        self.slots = t("xlb_slots")
        self.backends = t("xlb_backends")
        self.maglev = MaglevTables(t("xlb_maglev"))
        self.ct = t("xlb_ct")
        self.ct_new = t("xlb_ct_new")  # flows not answered yet
        self.affinity = t("xlb_affinity")
        self.source_ranges = t("xlb_source_ranges")
        self.service_nets = t("xlb_service_nets")
        self.node_addrs = t("xlb_node_addrs")
        self.peer_devs = t("xlb_peer_devs")
        self.stats = t("xlb_stats")
        self.reasons = t("xlb_reasons")
        self.config = t("xlb_config")
        self.lb_ips = t("xlb_lb_ips")
        self.heartbeat = t("xlb_heartbeat")
        self.devices = t("xlb_devices")
        self._svc_key = layout(
            self.services.Key, {"addr": "16s", "port": "H", "proto": "B", "scope": "B"}
        )
        self._svc_leaf = layout(
            self.services.Leaf,
            {
                "id": "I",
                "group": "I",
                "affinity_timeout": "I",
                "count": "H",
                "algorithm": "B",
                "flags": "H",
            },
        )
        self._backend_leaf = layout(self.backends.Leaf, {"addr": "16s", "port": "H", "flags": "B"})
        self._slot_key = layout(self.slots.Key, {"group": "I", "slot": "I"})

    @classmethod
    def open(cls, pin_root: str) -> Maps:
        return cls(open_tables(pin_root), pin_root)

    def close(self) -> None:
        for table in self.tables.values():
            table.close()

    # -- the same entries as bytes, for batched writes ---------------------------------------------

    def svc_key_raw(self, address: str, port: int, protocol: Protocol, scope: Scope) -> bytes:
        return self._svc_key.pack(
            addr_bytes(address), htons(port), PROTO_NUM[protocol], SCOPE_NUM[scope]
        )

    def svc_leaf_raw(self, v: SvcValue) -> bytes:
        return self._svc_leaf.pack(v.id, v.group, v.affinity_timeout, v.count, v.algorithm, v.flags)

    def backend_leaf_raw(self, v: BackendValue) -> bytes:
        return self._backend_leaf.pack(addr_bytes(v.address), htons(v.port), v.flags)

    def slot_key_raw(self, group: int, slot: int) -> bytes:
        return self._slot_key.pack(group, slot)

    # -- services ------------------------------------------------------------------------------

    def svc_key(self, address: str, port: int, protocol: Protocol, scope: Scope) -> Any:
        k = self.services.Key()
        set_addr(k.addr, address)
        k.port = htons(port)
        k.proto = PROTO_NUM[protocol]
        k.scope = SCOPE_NUM[scope]
        return k

    def read_services(self) -> dict[tuple[str, int, Protocol, Scope], SvcValue]:
        out = {}
        for k, v in self.services.items():
            key = (get_addr(k.addr), ntohs(k.port), PROTO_NAME[k.proto], SCOPE_NAME[k.scope])
            out[key] = SvcValue(v.id, v.group, v.affinity_timeout, v.count, v.algorithm, v.flags)
        return out

    # -- backends and slots ----------------------------------------------------------------------

    def read_backends(self) -> dict[int, BackendValue]:
        """The occupied slots of the backends array (port 0 marks an empty one), in one
        batch lookup rather than a syscall per slot."""
        return {
            getattr(k, "value", k): BackendValue(get_addr(v.addr), ntohs(v.port), v.flags)
            for k, v in self.backends.items_lookup_batch()
            if v.port
        }

    def slot_key(self, group: int, slot: int) -> Any:
        k = self.slots.Key()
        k.group = group
        k.slot = slot
        return k

    def read_slots(self) -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        for k, v in self.slots.items():
            out.setdefault(k.group, {})[k.slot] = v.value
        return out

    # -- source ranges ---------------------------------------------------------------------------

    def range_key(self, svc_id: int, cidr: str) -> Any:
        net = ipaddress.ip_network(cidr, strict=False)
        k = self.source_ranges.Key()
        k.prefixlen = 32 + (96 + net.prefixlen if net.version == 4 else net.prefixlen)
        k.svc = svc_id
        set_addr(k.addr, str(net.network_address))
        return k

    def read_source_ranges(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for k, _ in self.source_ranges.items():
            addr = get_addr(k.addr)
            bits = k.prefixlen - 32 - (96 if ":" not in addr else 0)
            out.setdefault(k.svc, set()).add(str(ipaddress.ip_network(f"{addr}/{bits}")))
        return out

    # -- the service address space ------------------------------------------------------------

    def net_key(self, cidr: str) -> Any:
        """A prefix as xlb_service_nets keys it (an address alone: its full length)."""
        net = ipaddress.ip_network(cidr, strict=False)
        k = self.service_nets.Key()
        k.prefixlen = 96 + net.prefixlen if net.version == 4 else net.prefixlen
        set_addr(k.addr, str(net.network_address))
        return k

    def addr_key(self, address: str) -> Any:
        """An address as the maps keyed by one (union xlb_addr) hold it."""
        k = self.node_addrs.Key()
        set_addr(k, address)
        return k

    def read_node_addrs(self) -> set[str]:
        return {get_addr(k) for k in self.node_addrs}

    def read_service_nets(self) -> dict[str, int]:
        """prefix -> XLB_NET_*; a full-length prefix as the address alone."""
        out = {}
        for k, v in self.service_nets.items():
            addr = get_addr(k.addr)
            bits = k.prefixlen - (96 if ":" not in addr else 0)
            full = 32 if ":" not in addr else 128
            out[addr if bits == full else f"{addr}/{bits}"] = v.value
        return out

    # -- counters ---------------------------------------------------------------------------------

    def reason_counts(self) -> dict[str, int]:
        """Every reason's count; 0 for one the pinned map has no room for (maps of an older
        xlb, until the loader carries them over)."""
        out = {}
        for i, name in enumerate(REASONS):
            found = self.reasons.lookup(ct.c_uint32(i)) if i < self.reasons.max_entries else None
            out[name] = sum(found) if found is not None else 0
        return out

    def svc_counts(self, svc_id: int) -> dict[str, int]:
        per_cpu = self.stats[ct.c_uint32(svc_id)]
        return {
            f: sum(getattr(c, f) for c in per_cpu)
            for f in ("packets", "bytes", "new_flows", "drops")
        }
