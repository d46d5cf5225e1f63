"""Sizes and places of the datapath's maps: one config shared by the loader (as -D flags for
the C) and the sync, and the memory each size costs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..maglev import DEFAULT_M, is_prime
from .conntrack import Timeouts

DEFAULT_PIN_ROOT = "/sys/fs/bpf/xlb"

# Pinned map file -> the field that sizes it (stats share max_services; so does the outer
# Maglev map, a group's table being sized from its backends as it is built).
SIZE_FIELDS = {
    "services": "max_services",
    "maglev": "max_services",
    "backends": "max_backends",
    "slots": "max_slots",
    "ct": "ct_size",
    "ct_new": "ct_new_size",
    "frags": "frags_size",
    "affinity": "affinity_size",
    "source_ranges": "max_source_ranges",
    "service_nets": "max_services",
}


@dataclass(frozen=True)
class DatapathConfig:
    pin_root: str = DEFAULT_PIN_ROOT
    max_services: int = 65536  # frontends (address, port, protocol, scope)
    max_backends: int = 65536
    max_slots: int = 262144  # backends over all groups
    # the largest Maglev M a group's table takes (prime): each group's is the smallest of
    # maglev.TABLE_SIZES with 100 slots a backend, up to this
    ring_size: int = DEFAULT_M
    ct_size: int = 262144  # tracked flows from outside (two entries each)
    # flows not answered yet wait apart (a SYN flood evicts its own kind, never an
    # established flow); 0: a quarter of ct_size
    ct_new_size: int = 0
    affinity_size: int = 65536
    # datagrams in flight in fragments (their first fragment's ports, until the rest passed)
    frags_size: int = 8192
    max_source_ranges: int = 16384
    # Source ports on the node address for flows to backends on other nodes: the IANA dynamic
    # range, reserved from the node's own ephemeral ports (ip_local_reserved_ports) so that
    # no local socket ever holds a tuple a SNATed flow needs. A port is free again 10 s after
    # its flow closed: about 1,600 new connections per second to one remote backend.
    snat_ports: tuple[int, int] = (49152, 65535)
    # how long a flow lives without a packet, by state (written to the config map: a change
    # needs no recompile)
    ct_timeouts: Timeouts = field(default_factory=Timeouts)
    # the seed of the flow and client hashes (Maglev, source hash, SNAT ports): the cluster's
    # own, the same on every node; 0: maps.h's public default
    hash_seed: int = 0
    # how a packet DNATed to a pod on this node reaches it: "stack" (XDP_PASS: the host's
    # routing and netfilter, as kube-proxy's) or "redirect" (tc_lb_in: straight into the
    # pod's namespace, past host-level NetworkPolicy of iptables-based CNIs)
    local_delivery: str = "stack"

    def __post_init__(self) -> None:
        if not self.ct_new_size:  # (frozen: the default is filled in once, here)
            object.__setattr__(self, "ct_new_size", max(1024, self.ct_size // 4))
        if not is_prime(self.ring_size):
            raise ValueError(f"ring_size must be prime, got {self.ring_size}")
        if self.local_delivery not in ("stack", "redirect"):
            raise ValueError(f"local_delivery must be stack or redirect, got {self.local_delivery}")
        lo, hi = self.snat_ports
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"snat_ports must be a range within 1024-65535, got {lo}-{hi}")

    def cflags(self) -> list[str]:
        return [
            f'-DXLB_PIN_ROOT="{self.pin_root}"',
            f"-DXLB_MAX_SERVICES={self.max_services}",
            f"-DXLB_MAX_BACKENDS={self.max_backends}",
            f"-DXLB_MAX_SLOTS={self.max_slots}",
            f"-DXLB_CT_SIZE={self.ct_size}",
            f"-DXLB_CT_NEW_SIZE={self.ct_new_size}",
            f"-DXLB_AFFINITY_SIZE={self.affinity_size}",
            f"-DXLB_FRAGS_SIZE={self.frags_size}",
            f"-DXLB_MAX_SOURCE_RANGES={self.max_source_ranges}",
        ]

    def memory(self, cpus: int = 1) -> dict[str, int]:
        """Approximate kernel memory per map, in bytes (value and key sizes from maps.h,
        plus the kernel's per-element overhead for hash maps of about 48 bytes). The Maglev
        tables are not reserved: each takes about 4 x M bytes as its group is built
        (SyncResult.table_bytes, `xlb status`)."""
        hash_overhead = 48
        return {
            "services": self.max_services * (20 + 24 + hash_overhead),
            "slots": self.max_slots * (8 + 4 + hash_overhead),
            "backends": self.max_backends * (4 + 20 + hash_overhead),
            "maglev": self.max_services * (4 + 4 + hash_overhead),
            "ct": self.ct_size * (40 + 56 + hash_overhead),
            "ct_new": self.ct_new_size * (40 + 56 + hash_overhead),
            "affinity": self.affinity_size * (24 + 32 + hash_overhead),
            "frags": self.frags_size * (40 + 16 + hash_overhead),
            "stats": self.max_services * 32 * cpus,
        }


def hash_seed_of(text: str) -> int:
    """The 32-bit seed the programs hash with, from any text the whole cluster shares (a
    flag's value, the kube-system namespace's uid): never 0, which means the default."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(b"xlb hash seed\0" + text.encode()).digest()[:4], "big")
    return seed or 1


def seed_fingerprint(seed: int) -> str:
    """What `xlb status` shows of a seed: enough to compare nodes, nothing to craft flows."""
    import hashlib

    if not seed:
        return "default (public)"
    return hashlib.sha256(b"xlb seed fingerprint\0" + seed.to_bytes(4, "big")).hexdigest()[:12]
