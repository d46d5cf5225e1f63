"""What an output of xdp_lb or tc_lb may be, judged by scapy from the state alone (not from
the programs' code): an untouched pass, a drop, or one of the rewrites and answers the
datapath exists for, each with its addresses, hop count and checksums right. A judgment is
None (allowed) or the reason it is not."""

from __future__ import annotations

from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6ND_NA, ICMPv6ND_NS, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
TC_NEXT = 0xFFFFFFFF


@dataclass
class Model:
    """The state the programs were given: frontend (address, port, proto) -> its backends
    ((address, port, local)), the node's addresses, the LoadBalancer IPs it owns."""

    frontends: dict[tuple[str, int, str], list[tuple[str, int, bool]]]
    node_addresses: set[str]
    owned: set[str]
    clients_seen: set[str] = field(default_factory=set)
    # where a flow's source port may be remapped to (SNAT, or a clashing reply tuple)
    snat_ports: tuple[int, int] = (49152, 65535)

    def remap_port(self, port: int) -> bool:
        return self.snat_ports[0] <= port <= self.snat_ports[1]


def _l3(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None  # noqa: SIM401


def frag_kind(pkt) -> str:
    """ "none", "first" (the part with the L4 header) or "later", from the IP header alone."""
    l3 = _l3(pkt)
    if isinstance(l3, IP):
        return "later" if l3.frag else "first" if l3.flags.MF else "none"
    if IPv6ExtHdrFragment in pkt:
        f = pkt[IPv6ExtHdrFragment]
        return "later" if f.offset else "first" if f.m else "none"
    return "none"


def _l4(pkt):
    if frag_kind(pkt) == "later":
        return None
    if TCP in pkt or UDP in pkt:
        return pkt[TCP] if TCP in pkt else pkt[UDP]
    l3 = _l3(pkt)
    if l3 is None:
        return None
    found = _raw_l4(l3)  # scapy leaves some first fragments and odd routing headers raw
    if found is None:
        return None
    proto, raw = found
    if proto == 6 and len(raw) >= 20:
        return TCP(raw)
    if proto == 17 and len(raw) >= 8:
        return UDP(raw)
    return None


def _raw_l4(l3) -> tuple[int, bytes] | None:
    """(protocol, transport bytes) of an IP packet, read from its bytes: IPv6 extension
    headers walked as RFC 8200 4 says (hop-by-hop, routing, destination, fragment)."""
    if isinstance(l3, IP):
        return l3.proto, bytes(l3.payload)[: max(l3.len - l3.ihl * 4, 0)]
    raw = bytes(l3)[40 : 40 + l3.plen]
    nh, off = l3.nh, 0
    for _ in range(4):
        if nh in (0, 43, 60) and len(raw) >= off + 8:
            nh, off = raw[off], off + (raw[off + 1] + 1) * 8
        elif nh == 44 and len(raw) >= off + 8:
            nh, off = raw[off], off + 8
        else:
            break
    return (nh, raw[off:]) if off <= len(raw) else None


def _decoded_by_scapy(pkt) -> bool:
    return TCP in pkt or UDP in pkt


def _ones(data: bytes) -> int:
    """The one's complement sum of data as 16-bit words, folded, 0xffff read as 0."""
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return 0 if s == 0xFFFF else s


def _addr_bytes(l3) -> bytes:
    import socket

    fam = socket.AF_INET6 if isinstance(l3, IPv6) else socket.AF_INET
    return socket.inet_pton(fam, l3.src) + socket.inet_pton(fam, l3.dst)


def _sum_kept(a, b) -> bool:
    """Whether a rewrite of a first fragment kept its L4 checksum as right (or wrong) as it
    was: the checksum covers the whole datagram, so it cannot be recomputed from one part,
    but addresses + this part's L4 bytes must sum the same before and after."""
    la, lb = _l4(a), _l4(b)
    if isinstance(la, UDP) and IP in a and la.chksum == 0:
        return lb.chksum == 0
    return _ones(_addr_bytes(_l3(a)) + bytes(la)) == _ones(_addr_bytes(_l3(b)) + bytes(lb))


def _proto(l4) -> str:
    return "TCP" if isinstance(l4, TCP) else "UDP"


def _l4_sum_ok(raw: bytes) -> bool:
    """Whether the L4 checksum is what scapy computes (an IPv4 UDP zero means none)."""
    pkt = Ether(raw)
    l4 = _l4(pkt)
    if l4 is None:
        return True
    if isinstance(l4, UDP) and IP in pkt and l4.chksum == 0:
        return True
    fresh = Ether(raw)
    del _l4(fresh).chksum
    return _l4(Ether(bytes(fresh))).chksum == l4.chksum


def _ip_sum_ok(raw: bytes) -> bool:
    pkt = Ether(raw)
    if IP not in pkt:
        return True
    fresh = Ether(raw)
    del fresh[IP].chksum
    return Ether(bytes(fresh))[IP].chksum == pkt[IP].chksum


def _hops(l3) -> int:
    return l3.ttl if isinstance(l3, IP) else l3.hlim


def judge_xdp(m: Model, inp: bytes, retval: int, out: bytes) -> str | None:
    if retval not in (XDP_DROP, XDP_PASS, XDP_TX):
        return f"verdict {retval}"
    if retval == XDP_DROP or (retval == XDP_PASS and out == inp):
        return None
    a, b = Ether(inp), Ether(out)
    ia, ib = _l3(a), _l3(b)
    if retval == XDP_TX and ARP in a and ARP in b:
        if not (a[ARP].op == 1 and a[ARP].pdst in m.owned and b[ARP].op == 2):
            return "an ARP answer to no request for an owned address"
        if (b[ARP].psrc, b[ARP].pdst, b.dst) != (a[ARP].pdst, a[ARP].psrc, a[ARP].hwsrc):
            return "an ARP answer with the wrong addresses"
        return None
    if retval == XDP_TX and ICMPv6ND_NA in b:
        if ICMPv6ND_NS not in a or a[ICMPv6ND_NS].tgt not in m.owned:
            return "an advertisement answering no solicitation for an owned address"
        if b[ICMPv6ND_NA].tgt != a[ICMPv6ND_NS].tgt or b[IPv6].hlim != 255:
            return "an advertisement with the wrong target or hop limit"
        return None if _l4_sum_ok(out) and _icmp6_ok(out) else "an advertisement's checksum"
    if ia is None or ib is None:
        return "a rewrite of something that is not IP"
    if frag_kind(a) == "later":
        return _judge_later_fragment(m, a, b, retval, inp, out)
    if icmp_error(a) is not None:
        return _judge_icmp(m, a, b, retval, inp, out, at_tc=False)
    la, lb = _l4(a), _l4(b)
    sent_back = (ib.src, ib.dst) == (ia.dst, ia.src)
    rst = lb is not None and isinstance(lb, TCP) and "R" in str(lb.flags)
    answer = ICMP in b or ICMPv6DestUnreach in b or is_time_exceeded(b) or rst
    if retval == XDP_TX and sent_back and answer:
        return _judge_reject(m, a, b, out)
    if la is None or lb is None or type(la) is not type(lb):
        return "a rewrite that changed or lost the transport"
    key = (ia.dst, la.dport, _proto(la))
    if bytes(la.payload) != bytes(lb.payload):
        return "the payload changed"
    # incremental updates keep a checksum's validity: a corrupt packet stays corrupt
    if _ip_sum_ok(out) != _ip_sum_ok(inp):
        return "the IPv4 header checksum's validity changed"
    whole = frag_kind(a) != "first" and _decoded_by_scapy(a) and _decoded_by_scapy(b)
    if not whole and not _sum_kept(a, b):
        return "an L4 checksum (not scapy's to recompute) did not follow its rewrite"
    if whole and _l4_sum_ok(out) != _l4_sum_ok(inp):
        return "the L4 checksum's validity changed"
    if key in m.frontends:  # a new or tracked flow of a frontend: DNAT (and SNAT if remote)
        backends = m.frontends[key]
        chosen = next(((h, p, loc) for h, p, loc in backends if (ib.dst, lb.dport) == (h, p)),
                      None)  # fmt: skip
        if chosen is None:
            return f"{key} sent to {(ib.dst, lb.dport)}, not one of its backends"
        local = chosen[2]
        if retval == XDP_PASS and local:
            kept = lb.sport == la.sport or m.remap_port(lb.sport)  # (a clash: netfilter remaps)
            if ib.src != ia.src or not kept or _hops(ib) != _hops(ia):
                return "a local delivery that changed the source or the hop count"
            return None
        if retval == XDP_TX and not local:
            if ib.src not in m.node_addresses or _hops(ib) != _hops(ia) - 1:
                return "a forward not from the node, or without its hop"
            return None
        return f"verdict {retval} for a {'local' if local else 'remote'} backend"
    # a remote backend's reply to the node: back to the client as the frontend
    remote = {(h, p) for bs in m.frontends.values() for h, p, loc in bs if not loc}
    if retval == XDP_TX and (ia.src, la.sport) in remote and ia.dst in m.node_addresses:
        served_by = [k for k, bs in m.frontends.items() if any((h, p) == (ia.src, la.sport)
                                                                for h, p, _ in bs)]  # fmt: skip
        if (ib.src, lb.sport, _proto(lb)) not in served_by:
            return "a reply that does not come from a frontend of its backend"
        if _hops(ib) != _hops(ia) - 1:
            return "a reply forwarded without its hop"
        return None
    return f"a rewrite of a packet to no frontend ({key}, verdict {retval})"


def icmp_error(pkt):
    """The ICMP / ICMPv6 error layer of pkt (one that quotes a packet), or None."""
    from scapy.layers.inet6 import _ICMPv6

    if ICMP in pkt and pkt[ICMP].type in (3, 11, 12) and not isinstance(pkt[ICMP].underlayer,
                                                                        IPerror):  # fmt: skip
        return pkt[ICMP]
    for layer in pkt.layers():
        if issubclass(layer, _ICMPv6) and pkt[layer].type in (1, 2, 3, 4):
            return pkt[layer]
    return None


def _quoted(pkt):
    """(quoted IP layer, its transport's bytes as quoted) of an ICMP error, or (None, b"").
    RFC 792 quotes only 8 bytes of the transport: scapy leaves a TCP quote that short raw,
    so the bytes are read here, not scapy's layer."""
    from scapy.layers.inet6 import IPerror6

    q3 = pkt.getlayer(IPerror6) or pkt.getlayer(IPerror)
    if q3 is None:
        return None, b""
    raw = bytes(q3.payload)
    size = q3.len - q3.ihl * 4 if isinstance(q3, IPerror) else q3.plen
    return q3, raw[: max(size, 0)]


def _without_l4_check(proto: str, l4: bytes) -> bytes:
    """A quoted transport's bytes after its ports, its checksum (if quoted) blanked."""
    at = 6 if proto == "UDP" else 16
    rest = bytearray(l4[4:])
    if len(l4) >= at + 2:
        rest[at - 4 : at - 2] = b"\0\0"
    return bytes(rest)


def _icmp_sum_ok(raw: bytes) -> bool:
    pkt = Ether(raw)
    e = icmp_error(pkt)
    fresh = Ether(raw)
    fe = icmp_error(fresh)
    if hasattr(fe, "chksum"):
        del fe.chksum
        return icmp_error(Ether(bytes(fresh))).chksum == e.chksum
    del fe.cksum
    return icmp_error(Ether(bytes(fresh))).cksum == e.cksum


def _judge_icmp(m: Model, a, b, retval: int, inp: bytes, out: bytes, at_tc: bool) -> str | None:
    """An ICMP error about a flow xlb rewrote, rewritten back: the quote becomes the packet
    as its sender sent it (the other side of the rewrite the model allows for that flow),
    the error goes to that sender, and no checksum's validity changes."""
    ib = _l3(b)
    qa3, qa4 = _quoted(a)
    qb3, qb4 = _quoted(b)
    if qa3 is None or qb3 is None or len(qa4) < 8 or len(qb4) != len(qa4):
        return "an ICMP error rewritten without a quote of its ports"
    proto = {6: "TCP", 17: "UDP"}.get(qa3.proto if isinstance(qa3, IPerror) else qa3.nh)
    if proto is None or _without_l4_check(proto, qa4) != _without_l4_check(proto, qb4):
        return "an ICMP error's quoted transport changed beyond its ports and checksum"
    if icmp_error(b).type != icmp_error(a).type or bytes(qa3)[:1] != bytes(qb3)[:1]:
        return "an ICMP error's type or quoted IP version changed"
    if _ip_sum_ok(out) != _ip_sum_ok(inp) or _icmp_sum_ok(out) != _icmp_sum_ok(inp):
        return "an ICMP error's checksum validity changed"
    if ib.dst != qb3.src:
        return "a translated ICMP error not sent to the quoted packet's sender"

    def ports(l4: bytes) -> tuple[int, int]:
        return int.from_bytes(l4[:2], "big"), int.from_bytes(l4[2:4], "big")

    before = (qa3.src, ports(qa4)[0], qa3.dst, ports(qa4)[1])
    after = (qb3.src, ports(qb4)[0], qb3.dst, ports(qb4)[1])
    for (fh, fp, fproto), bs in m.frontends.items():
        if fproto != proto:
            continue
        for bh, bp, loc in bs:
            # (a flow whose source port was remapped gets its client's own port back)
            client_port = after[1] == before[1] or m.remap_port(before[1])
            if at_tc and loc and before[2:] == (bh, bp) and after[0] == before[0] and (
                    client_port and after[2:] == (fh, fp)):  # fmt: skip
                return None if ib.src == fh else "a pod's error not from its frontend"
            if at_tc:
                continue
            remapped = after[3] == before[3] or m.remap_port(after[3])
            if loc and before[:2] == (fh, fp) and after[:3] == (bh, bp, before[2]) and remapped:
                return None if retval == XDP_PASS else "a local pod's error not delivered"
            if not loc and before[:2] == (fh, fp) and after[:2] == (bh, bp) and (
                    after[2] in m.node_addresses and retval == XDP_TX):  # fmt: skip
                return None  # about a reply: to the backend, about its own packet
            if not loc and before[2:] == (bh, bp) and before[0] in m.node_addresses and (
                    after[2:] == (fh, fp) and retval == XDP_TX and ib.src == fh):  # fmt: skip
                return None  # about a packet to the backend: to the client, from the frontend
    return f"an ICMP error translated from {before} to {after}, which no flow explains"


def _judge_later_fragment(m: Model, a, b, retval: int, inp: bytes, out: bytes) -> str | None:
    """A fragment without ports, rewritten as its datagram's first was: only its addresses
    change, to those of a frontend's backend (or, for a remote backend's reply, to one of
    its frontends), with a hop when forwarded."""
    ia, ib = _l3(a), _l3(b)
    if type(ia) is not type(ib) or bytes(ia.payload) != bytes(ib.payload):
        return "a later fragment's payload changed"
    if _ip_sum_ok(out) != _ip_sum_ok(inp):
        return "a later fragment's IPv4 header checksum's validity changed"
    at_frontend = [bs for (h, _, _), bs in m.frontends.items() if h == ia.dst]
    chosen = [loc for bs in at_frontend for h, _, loc in bs if h == ib.dst]
    if chosen:
        if retval == XDP_PASS and True in chosen and ib.src == ia.src and _hops(ib) == _hops(ia):
            return None
        if retval == XDP_TX and False in chosen and ib.src in m.node_addresses and (
                _hops(ib) == _hops(ia) - 1):  # fmt: skip
            return None
        return "a later fragment sent to a backend the wrong way"
    fronts = {h for (h, _, _), bs in m.frontends.items() for bh, _, loc in bs
              if bh == ia.src and not loc}  # fmt: skip
    if retval == XDP_TX and ia.dst in m.node_addresses and ib.src in fronts and (
            _hops(ib) == _hops(ia) - 1):  # fmt: skip
        return None
    return f"a later fragment rewritten to no backend or frontend ({ia.dst} -> {ib.dst})"


def _icmp6_ok(raw: bytes) -> bool:
    from scapy.layers.inet6 import _ICMPv6

    pkt = Ether(raw)
    fresh = Ether(raw)
    for layer in list(fresh.layers()):
        if issubclass(layer, _ICMPv6):
            del fresh[layer].cksum
            return Ether(bytes(fresh))[layer].cksum == pkt[layer].cksum
    return True


def is_time_exceeded(b) -> bool:
    from scapy.layers.inet6 import ICMPv6TimeExceeded

    return (ICMP in b and b[ICMP].type == 11) or ICMPv6TimeExceeded in b


def _judge_reject(m: Model, a, b, out: bytes) -> str | None:
    ia, ib, la = _l3(a), _l3(b), _l4(a)
    if is_time_exceeded(b):
        why = _judge_time_exceeded(m, a, b)
        if why:
            return why
    elif la is None:
        return "a reject of something that is neither TCP nor UDP"
    else:
        key = (ia.dst, la.dport, _proto(la))
        if key not in m.frontends or m.frontends[key]:
            return f"a reject for {key}, which is no frontend without backends"
    if (ib.src, ib.dst) != (ia.dst, ia.src) or b.dst != a.src:
        return "a reject not sent back to its sender"
    if int(b.src.split(":")[0], 16) & 1:
        return "a reject from a group MAC"
    if not (_ip_sum_ok(out) and _l4_sum_ok(out) and _icmp6_ok(out)):
        return "a reject's checksum"
    return None


def _judge_time_exceeded(m: Model, a, b) -> str | None:
    """Time exceeded (RFC 1812 5.3.1) is the answer to a packet xdp_lb would forward (to a
    remote backend, or a remote backend's reply) that had no hop left; it quotes that
    packet's first bytes as they arrived, and never answers a non-initial fragment or an
    ICMP error (RFC 1122 3.2.2)."""
    ia = _l3(a)
    if _hops(ia) > 1 or frag_kind(a) == "later" or icmp_error(a) is not None:
        return "time exceeded for a packet that may go on, or that gets no error"
    la = _l4(a)
    if la is None:
        return "time exceeded for a packet without ports"
    backends = m.frontends.get((ia.dst, la.dport, _proto(la)), [])
    to_remote = any(not loc for _, _, loc in backends)
    remote = {(h, p) for bs in m.frontends.values() for h, p, loc in bs if not loc}
    from_remote = (ia.src, la.sport) in remote and ia.dst in m.node_addresses
    if not (to_remote or from_remote):
        return "time exceeded for a packet xdp_lb would not forward"
    layer = b[ICMP] if ICMP in b else _l3(b).payload
    quote = bytes(layer.payload)
    if len(quote) < 28 or quote != bytes(ia)[: len(quote)]:
        return "time exceeded quoting something else than the packet"
    return None


def judge_tc(m: Model, inp: bytes, retval: int, out: bytes) -> str | None:
    """tc_lb lets every packet go on; it rewrites only a local backend's reply, whose source
    becomes a frontend of that backend."""
    if retval != TC_NEXT:
        return f"tc verdict {retval}"
    if out == inp:
        return None
    a, b = Ether(inp), Ether(out)
    ia, ib, la, lb = _l3(a), _l3(b), _l4(a), _l4(b)
    if ia is not None and ib is not None and icmp_error(a) is not None:
        return _judge_icmp(m, a, b, retval, inp, out, at_tc=True)
    if ia is not None and ib is not None and frag_kind(a) == "later":
        fronts = {h for (h, _, _), bs in m.frontends.items() for bh, _, loc in bs
                  if bh == ia.src and loc}  # fmt: skip
        if ib.src not in fronts or ib.dst != ia.dst or bytes(ia.payload) != bytes(ib.payload):
            return "a tc rewrite of a later fragment that is not a local backend's reply"
        return None if _ip_sum_ok(out) == _ip_sum_ok(inp) else "a later fragment's checksum"
    if None in (ia, ib, la, lb):
        return "a tc rewrite of something that is not TCP/UDP over IP"
    served_by = [k for k, bs in m.frontends.items() if (ia.src, la.sport, True) in bs]
    if (ib.src, lb.sport, _proto(lb)) not in served_by:
        return "a tc rewrite whose source is no frontend of a local backend"
    restored = lb.dport == la.dport or m.remap_port(la.dport)  # the client's own port again
    if ib.dst != ia.dst or not restored or bytes(la.payload) != bytes(lb.payload):
        return "a tc rewrite that changed the destination or the payload"
    if _ip_sum_ok(out) != _ip_sum_ok(inp):
        return "a tc rewrite changed the IPv4 header checksum's validity"
    if frag_kind(a) == "first" and not _sum_kept(a, b):
        return "a tc rewrite of a first fragment broke its L4 checksum"
    if frag_kind(a) != "first" and _l4_sum_ok(out) != _l4_sum_ok(inp):
        return "a tc rewrite changed a checksum's validity"
    return None
