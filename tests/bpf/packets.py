"""Packets for the table-driven tests, built and checked with scapy (an independent parser)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

CLIENT_MAC = "02:00:00:00:00:01"
NODE_MAC = "02:00:00:00:00:02"


def ip_layer(src: str, dst: str, **kw):
    return IPv6(src=src, dst=dst, **kw) if ":" in dst else IP(src=src, dst=dst, **kw)


def tcp(
    src: str, sport: int, dst: str, dport: int, flags: str = "S", payload: bytes = b"", **ip_kw
) -> Ether:
    return (
        Ether(src=CLIENT_MAC, dst=NODE_MAC)
        / ip_layer(src, dst, **ip_kw)
        / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0 if "A" not in flags else 5000)
        / payload
    )


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"hello", **ip_kw) -> Ether:
    return (
        Ether(src=CLIENT_MAC, dst=NODE_MAC)
        / ip_layer(src, dst, **ip_kw)
        / UDP(sport=sport, dport=dport)
        / payload
    )


def rewritten(pkt: Ether, src=None, sport=None, dst=None, dport=None) -> Ether:
    """pkt with its tuple changed and every checksum and length recomputed by scapy."""
    out = Ether(bytes(pkt))
    l3 = out[IPv6] if IPv6 in out else out[IP]
    l4 = out[TCP] if TCP in out else out[UDP]
    if src:
        l3.src = src
    if dst:
        l3.dst = dst
    if sport:
        l4.sport = sport
    if dport:
        l4.dport = dport
    if IP in out:
        del out[IP].chksum
    if l4.chksum != 0 or IPv6 in out or TCP in out:  # an IPv4 UDP checksum of 0 stays 0
        del l4.chksum
    return Ether(bytes(out))


def checksums_valid(raw: bytes) -> bool:
    """Whether every IP/TCP/UDP/ICMP checksum in raw is what scapy computes."""
    pkt = Ether(raw)
    fresh = Ether(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in fresh:
            if layer is UDP and IP in fresh and fresh[UDP].chksum == 0:
                continue
            if hasattr(fresh[layer], "chksum"):
                del fresh[layer].chksum
    from scapy.layers.inet6 import _ICMPv6

    for layer in list(fresh.layers()):
        if issubclass(layer, _ICMPv6) and hasattr(fresh[layer], "cksum"):
            del fresh[layer].cksum
    return bytes(Ether(bytes(fresh))) == bytes(pkt)
