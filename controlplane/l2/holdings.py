"""The LoadBalancer IPs a member says it announces, carried by the gossip in chunks.

Balanced placement (placement.py) starts from every member's holdings. A datagram may not
pass MAX_DATAGRAM (1400 bytes: no IP fragments on a 1500-byte LAN), and a node may hold
hundreds of addresses, so the set is packed (4 or 16 bytes an address), cut into chunks of
CHUNK bytes and each datagram carries the next chunk in turn, with the set's version (a hash
of the whole) and the number of chunks. A receiver keeps the last complete set of each
member and replaces it only when every chunk of a newer version has arrived and the hash
holds: a half-heard change never counts.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

CHUNK = 640  # bytes of packed addresses a datagram carries
MAX_CHUNKS = 64  # 40 KiB: about 10,000 IPv4 or 2,400 IPv6 addresses a member


def pack(ips: Iterable[str]) -> bytes:
    """The set, sorted, each address as a length byte and its bytes."""
    out = bytearray()
    for a in sorted({ipaddress.ip_address(ip) for ip in ips}, key=lambda a: (a.version, a)):
        out += bytes([len(a.packed)]) + a.packed
    return bytes(out)


def unpack(data: bytes) -> set[str]:
    """pack's inverse; raises ValueError on anything else."""
    out, i = set(), 0
    while i < len(data):
        n = data[i]
        if n not in (4, 16) or i + 1 + n > len(data):
            raise ValueError("not a packed address list")
        out.add(str(ipaddress.ip_address(data[i + 1 : i + 1 + n])))
        i += 1 + n
    return out


def version_of(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"xlb holdings\0" + data).digest()[:4], "big")


def chunks(ips: Iterable[str]) -> tuple[int, list[bytes]]:
    """(version, chunks) of a set; an empty set is one empty chunk. Chunks end on address
    boundaries, so each is checked on its own."""
    data = pack(ips)
    out, i = [], 0
    while i < len(data):
        j = i
        while j < len(data) and j + 1 + data[j] - i <= CHUNK:
            j += 1 + data[j]
        out.append(data[i:j])
        i = j
    return version_of(data), out or [b""]


class Assembler:
    """One member's holdings as heard: the last complete set, and the chunks of a newer
    version while they arrive."""

    def __init__(self) -> None:
        self.version: int | None = None  # of the complete set (None: none heard yet)
        self.ips: set[str] = set()
        self.pending: tuple[int, int] | None = None  # (version, count) being gathered
        self.parts: dict[int, bytes] = {}

    def add(self, version: int, index: int, count: int, part: bytes) -> bool:
        """One chunk; True when it completed a new set. Raises ValueError on a chunk that
        cannot be one (the caller counts it malformed)."""
        if not (0 < count <= MAX_CHUNKS and 0 <= index < count and len(part) <= CHUNK):
            raise ValueError("holdings chunk out of bounds")
        if version == self.version:
            return False
        if self.pending != (version, count):
            self.pending, self.parts = (version, count), {}
        self.parts[index] = bytes(part)
        if len(self.parts) < count:
            return False
        data = b"".join(self.parts[i] for i in range(count))
        self.pending, self.parts = None, {}
        if version_of(data) != version:
            raise ValueError("holdings do not match their version")
        self.ips, self.version = unpack(data), version
        return True
