"""A LAN host's address resolution for some addresses, round after round, and every answer,
as JSON on stdout: ARP requests (RFC 826, broadcast) for IPv4 targets; neighbour
solicitations (RFC 4861 §7.2.2: to the target's solicited-node group, with the sender's
link-layer address) for IPv6 ones. Run inside the client's namespace:

    python neighbour_probe.py IFACE SOURCE4|- SOURCE6|- COUNT INTERVAL TARGET...

COUNT 0 sends until SIGINT or SIGTERM. Each answer is attributed to the last round sent
before it came (its index; arping's counts replies, not requests), so two answers of one
round from two MACs are two nodes answering one address. sent_at holds each round's
CLOCK_MONOTONIC time (one clock for every namespace)."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time

from scapy.all import (
    ARP,
    AsyncSniffer,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    conf,
    get_if_hwaddr,
)


def solicited_node(target: str) -> tuple[str, str]:
    """The solicited-node group of target (ff02::1:ffXX:XXXX) and its MAC (33:33:ff:XX:XX:XX)."""
    low = ipaddress.IPv6Address(target).packed[-3:]
    group = ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + low)
    return str(group), "33:33:ff:" + ":".join(f"{b:02x}" for b in low)


def question(mac: str, source4: str, source6: str, target: str):
    if ":" not in target:
        return Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=mac, psrc=source4, hwdst="00:00:00:00:00:00", pdst=target
        )
    group, group_mac = solicited_node(target)
    return (
        Ether(src=mac, dst=group_mac)
        / IPv6(src=source6, dst=group, hlim=255)
        / ICMPv6ND_NS(tgt=target)
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )


def main() -> None:
    iface, source4, source6 = sys.argv[1], sys.argv[2], sys.argv[3]
    count, interval = int(sys.argv[4]), float(sys.argv[5])
    targets = [str(ipaddress.ip_address(t)) for t in sys.argv[6:]]
    mac = get_if_hwaddr(iface)
    sock = conf.L2socket(iface=iface)
    answers: list[dict] = []
    sent_at: list[float] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def seen(pkt) -> None:
        if not sent_at:
            return
        if ARP in pkt and pkt[ARP].op == 2 and pkt[ARP].psrc in targets:
            arp = pkt[ARP]
            answers.append({"i": len(sent_at) - 1, "target": arp.psrc, "mac": pkt[Ether].src,
                            "hwsrc": arp.hwsrc, "dst": arp.pdst, "ether_dst": pkt[Ether].dst,
                            "S": int(arp.pdst == source4)})  # fmt: skip
        elif ICMPv6ND_NA in pkt and pkt[ICMPv6ND_NA].tgt in targets:
            na = pkt[ICMPv6ND_NA]
            tll = pkt[ICMPv6NDOptDstLLAddr].lladdr if ICMPv6NDOptDstLLAddr in pkt else None
            answers.append({"i": len(sent_at) - 1, "target": na.tgt, "mac": pkt[Ether].src,
                            "dst": pkt[IPv6].dst, "R": na.R, "S": na.S, "O": na.O, "tll": tll,
                            "hlim": pkt[IPv6].hlim})  # fmt: skip

    sniffer = AsyncSniffer(iface=iface, filter="arp or icmp6", prn=seen, store=False)
    sniffer.start()
    time.sleep(0.3)  # the capture is open before the first question leaves
    frames = [question(mac, source4, source6, t) for t in targets]
    while not stop.is_set() and (count == 0 or len(sent_at) < count):
        sent_at.append(time.monotonic())
        for frame in frames:
            sock.send(frame)
        stop.wait(interval)
    time.sleep(0.2)
    sniffer.stop()
    sock.close()
    print(json.dumps({"sent": len(sent_at), "sent_at": sent_at, "answers": answers}))


if __name__ == "__main__":
    main()
