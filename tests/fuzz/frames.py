"""Frames for the fuzzer: well-formed seeds of every kind xdp_lb meets (TCP and UDP of both
families to frontends and elsewhere, tracked replies, ARP, neighbour solicitations, ICMP
errors with inner packets, fragments, VLAN tags, IPv4 options, IPv6 extension headers),
then mutated as bytes (truncated, bits flipped, fields overwritten, garbage appended).
Reproducible from one seed."""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

CLIENT_MAC, NODE_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def seeds(frontends: list[tuple[str, int, str]], owned: list[str], backends: list[tuple[str, int]],
          node4: str, node6: str) -> list[bytes]:  # fmt: skip
    """Well-formed frames: to each frontend and beside it, replies from backends, neighbour
    requests for owned addresses, and the odd kinds."""
    rng = random.Random(1)
    out = []
    clients4 = ["203.0.113.7", "198.51.100.9", "192.168.198.100"]
    clients6 = ["2001:db8::7", "fd00:198::100"]

    def eth(payload, src=CLIENT_MAC, dst=NODE_MAC):
        return Ether(src=src, dst=dst) / payload

    for address, port, proto in frontends:
        v6 = ":" in address
        for client in clients6 if v6 else clients4:
            l3 = IPv6(src=client, dst=address) if v6 else IP(src=client, dst=address)
            sport = rng.randrange(1024, 65536)
            hop1 = (IPv6(src=client, dst=address, hlim=1) if v6 else
                    IP(src=client, dst=address, ttl=1))  # fmt: skip
            if proto == "TCP":
                for flags in ("S", "A", "PA", "FA", "R", "SA", "RA"):
                    out.append(eth(l3 / TCP(sport=sport, dport=port, flags=flags) / b"data"))
                out.append(eth(hop1 / TCP(sport=sport, dport=port, flags="S")))  # tcptraceroute
                # one client port to every frontend: where two share a backend, the replies
                # would clash (a remap)
                out.append(eth(l3 / TCP(sport=40404, dport=port, flags="S")))
            else:
                out.append(eth(hop1 / UDP(sport=sport, dport=port) / b"traceroute"))
                out.append(eth(l3 / UDP(sport=sport, dport=port) / (b"x" * rng.randrange(0, 64))))
                # a datagram in fragments: the later ones follow the first (if it came)
                big = UDP(sport=sport, dport=port) / (b"F" * 1400)
                if v6:
                    parts = fragment6(IPv6(src=client, dst=address) /
                                      IPv6ExtHdrFragment(id=sport) / big, 600)  # fmt: skip
                else:
                    parts = fragment(IP(src=client, dst=address, id=sport) / big, fragsize=592)
                out.extend(eth(f) for f in parts)
            if not v6:
                out.append(eth(IP(src=client, dst=address, flags="MF", frag=0) /
                               UDP(sport=sport, dport=port) / (b"f" * 64)))  # fmt: skip
                out.append(eth(IP(src=client, dst=address, options=b"\x01\x01\x01\x00") /
                               TCP(sport=sport, dport=port, flags="S")))  # fmt: skip
                out.append(Ether(src=CLIENT_MAC, dst=NODE_MAC) / Dot1Q(vlan=7) /
                           IP(src=client, dst=address) / TCP(sport=sport, dport=port))  # fmt: skip
                inner = IP(src=address, dst=client) / TCP(sport=port, dport=sport)
                out.append(eth(IP(src=client, dst=address) / ICMP(type=3, code=4) / bytes(inner)))
            else:
                for ext in (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=1),
                            IPv6ExtHdrRouting(segleft=0),
                            IPv6ExtHdrRouting(addresses=["2001:db8::1"], segleft=1),
                            IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()):  # fmt: skip
                    out.append(eth(IPv6(src=client, dst=address) / ext /
                                   TCP(sport=sport, dport=port, flags="S")))  # fmt: skip
                inner = IPv6(src=address, dst=client) / TCP(sport=port, dport=sport)
                out.append(eth(IPv6(src=client, dst=address) / ICMPv6PacketTooBig(mtu=1280) /
                               bytes(inner)))  # fmt: skip
                out.append(eth(IPv6(src=client, dst=address) / ICMPv6DestUnreach() / bytes(inner)))
    for address, port in backends:  # replies, to the node's SNAT ports and to clients
        v6 = ":" in address
        for dst in (node6 if v6 else node4, clients6[0] if v6 else clients4[0]):
            l3 = IPv6(src=address, dst=dst) if v6 else IP(src=address, dst=dst)
            out.append(eth(l3 / TCP(sport=port, dport=rng.randrange(49152, 65536), flags="SA")))
            out.append(eth(l3 / UDP(sport=port, dport=rng.randrange(49152, 65536)) / b"r"))
            big = UDP(sport=port, dport=rng.randrange(49152, 65536)) / (b"R" * 1400)
            if v6:
                parts = fragment6(IPv6(src=address, dst=dst) / IPv6ExtHdrFragment(id=port) / big,
                                  600)  # fmt: skip
            else:
                parts = fragment(IP(src=address, dst=dst, id=port) / big, fragsize=592)
            out.extend(eth(f) for f in parts)
    for ip in owned:
        if ":" in ip:
            low = bytes.fromhex(ip.split(":")[-1].rjust(6, "0")[-6:])
            group = "ff02::1:ff" + f"{low[0]:02x}:{low[1]:02x}{low[2]:02x}"
            for src in (clients6[1], "::"):
                pkt = IPv6(src=src, dst=group, hlim=255) / ICMPv6ND_NS(tgt=ip)
                if src != "::":
                    pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
                out.append(eth(pkt, dst="33:33:ff:" + ":".join(f"{b:02x}" for b in low)))
        else:
            out.append(eth(ARP(op=1, hwsrc=CLIENT_MAC, psrc=clients4[2], pdst=ip),
                           dst="ff:ff:ff:ff:ff:ff"))  # fmt: skip
    out.append(eth(IP(src=clients4[0], dst=node4) / ICMP() / b"ping"))
    out.append(eth(IPv6(src=clients6[0], dst=node6) / UDP(sport=1, dport=2)))
    return [bytes(p) for p in out]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One random change (or none) to a well-formed frame."""
    kind = rng.randrange(8)
    b = bytearray(frame)
    if kind == 0:
        return frame
    if kind == 1:  # truncated anywhere
        return bytes(b[: rng.randrange(0, len(b) + 1)])
    if kind == 2:  # bits flipped
        for _ in range(rng.randrange(1, 5)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:  # a header byte overwritten (Ethernet, IP, the first L4 bytes)
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(min(len(b), 14 + 60 + 20))
            b[i] = rng.randrange(256)
        return bytes(b)
    if kind == 4:  # garbage appended (a length that disagrees with the headers)
        return bytes(b) + rng.randbytes(rng.randrange(1, 200))
    if kind == 5:  # the IP length fields made to lie
        if len(b) > 20:
            i = 16 if b[12:14] == b"\x08\x00" else 18
            if i + 2 <= len(b):
                b[i : i + 2] = rng.randrange(65536).to_bytes(2, "big")
        return bytes(b)
    if kind == 6:  # pure noise of a plausible size
        return rng.randbytes(rng.randrange(0, 128))
    # a random run overwritten anywhere
    i = rng.randrange(len(b)) if b else 0
    n = rng.randrange(1, 9)
    b[i : i + n] = rng.randbytes(n)
    return bytes(b)
