"""The fuzzer: seeds of every kind, mutated, through xdp_lb (in a namespace with routes and
neighbours, so that forwards are real) and tc_lb; tests/fuzz/model.py judges every output
from the state alone. `make test` runs a short pass; `make fuzz` runs 1,000,000 frames
(FUZZ_FRAMES). A failure names the seed and the frame, so it can be replayed."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import DesiredState
from tests.bpf.test_neighbour import OWNED4, OWNED6, UPLINK_MAC
from tests.bpf.test_xdp_forward import (
    REMOTE4,
    REMOTE6,
    lan,  # noqa: F401 (a fixture)
    remote,
)
from tests.bpf.test_xdp_lb import NODE4, NODE6, frontend
from tests.bpf.test_xdp_lb import STATE as LOCAL
from tests.fuzz.frames import mutate, seeds
from tests.fuzz.model import Model, frag_kind, icmp_error, is_time_exceeded, judge_tc, judge_xdp

FRAMES = int(os.environ.get("FUZZ_FRAMES", "20000"))
SEED = int(os.environ.get("FUZZ_SEED", str(int(time.time()))))


def test_random_and_mutated_frames_only_ever_get_allowed_outputs(xdp, tc, maps, syncer, lan):  # noqa: F811
    remotes = (
        frontend(NODE4, 31080, "TCP", [remote(REMOTE4, 8080)]),
        frontend(NODE4, 31053, "UDP", [remote(REMOTE4, 5353)]),
        frontend(NODE6, 31080, "TCP", [remote(REMOTE6, 8080)]),
    )
    state = DesiredState(frontends=LOCAL.frontends + remotes)
    syncer.sync(state, NODE4, NODE6, UPLINK_MAC)
    syncer.sync_lb_ips({OWNED4, OWNED6})
    syncer.heartbeat()
    model = Model(
        frontends={
            (f.address, f.port, str(f.protocol)): [(b.address, b.port, b.local) for b in f.backends]
            for f in state.frontends
        },  # fmt: skip
        node_addresses={NODE4, NODE6},
        owned={OWNED4, OWNED6},
    )
    backends = sorted({(h, p) for bs in model.frontends.values() for h, p, _ in bs})
    pool = seeds(sorted(model.frontends), sorted(model.owned), backends, NODE4, NODE6)
    _, ifindex, _ = lan
    xdp_fd, tc_fd = xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd
    rng = random.Random(SEED)
    verdicts: Counter = Counter()
    replies: list[bytes] = []
    bad = []
    start = time.monotonic()
    for n in range(FRAMES):
        tc_turn = n % 4 == 3
        source = replies if tc_turn and replies and rng.random() < 0.7 else pool
        frame = mutate(rng.choice(source), rng)
        if len(frame) < 14:  # BPF_PROG_TEST_RUN takes no frame shorter than its Ethernet header
            frame += bytes(14 - len(frame))
        if tc_turn:  # a quarter through tc_lb: local backends' replies (mutated), and the rest
            try:
                got = prog_test_run(tc_fd, frame)
            except OSError as exc:  # a network header shorter than its kind: no skb is that
                if exc.errno != 22:
                    raise
                verdicts["tc: no skb (refused by the test run)"] += 1
                continue
            why = judge_tc(model, frame, got.retval, got.data)
            verdicts["tc " + ("next" if got.retval == 0xFFFFFFFF else str(got.retval)) +
                     ("" if got.data == frame else " rewritten")] += 1  # fmt: skip
        else:
            got = prog_test_run(xdp_fd, frame, ifindex=ifindex)
            why = judge_xdp(model, frame, got.retval, got.data)
            verdicts[{1: "drop", 2: "pass", 3: "tx"}.get(got.retval, str(got.retval)) +
                     ("" if got.data == frame else " rewritten")] += 1  # fmt: skip
            if got.retval == 2 and got.data != frame and len(replies) < 512:
                replies.append(reply_of(got.data))  # what the local backend would answer
                replies.append(error_of(got.data))  # or its stack, with no socket there
        if got.data != frame and len(frame) > 34:
            kind = frag_kind(Ether(frame))
            if kind != "none":
                verdicts[f"{kind} fragment rewritten"] += 1
            if icmp_error(Ether(frame)) is not None:
                verdicts["icmp error translated"] += 1
            elif got.retval == 3 and is_time_exceeded(Ether(got.data)):
                verdicts["time exceeded"] += 1
        if why:
            bad.append((n, why, frame.hex()))
            if len(bad) >= 5:
                break
        if n % 5000 == 4999:
            syncer.heartbeat()  # the kernel answers ARP/NDP only while the agent beats
    seconds = time.monotonic() - start
    print(f"fuzz seed {SEED}: {n + 1} frames in {seconds:.1f}s, {dict(sorted(verdicts.items()))}")
    assert not bad, f"FUZZ_SEED={SEED}: " + "; ".join(f"#{n}: {w} ({h})" for n, w, h in bad)
    # the judge saw real work of every kind
    assert verdicts["tx rewritten"] and verdicts["pass rewritten"], verdicts
    assert verdicts["tc next rewritten"], verdicts
    assert verdicts["first fragment rewritten"] and verdicts["later fragment rewritten"], verdicts
    assert verdicts["icmp error translated"] and verdicts["time exceeded"], verdicts


def reply_of(delivered: bytes) -> bytes:
    """The local backend's answer to a packet xdp_lb delivered to it: addresses and ports
    swapped, checksums recomputed (what the pod's stack would send)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    pkt = Ether(delivered)
    if TCP not in pkt and UDP not in pkt:  # a later fragment: its first one answers
        return delivered
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    kind = IP if IP in pkt else IPv6
    back = Ether(src=pkt.dst, dst=pkt.src) / kind(src=l3.dst, dst=l3.src)
    if TCP in pkt:
        back = back / TCP(sport=l4.dport, dport=l4.sport, flags="SA" if "S" in str(l4.flags)
                          else "A") / b"answer"  # fmt: skip
    else:
        back = back / UDP(sport=l4.dport, dport=l4.sport) / b"answer"
    return bytes(back)


def error_of(delivered: bytes) -> bytes:
    """The port unreachable a local backend's stack sends for a packet xdp_lb delivered to
    it (RFC 1122 3.2.2.1, RFC 4443 3.1: quoting as much of it as fits)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether

    pkt = Ether(delivered)
    if IPv6 in pkt:
        l3 = pkt[IPv6]
        err = IPv6(src=l3.dst, dst=l3.src) / ICMPv6DestUnreach(code=4) / bytes(l3)[:1232]
    elif IP in pkt:
        l3 = pkt[IP]
        err = IP(src=l3.dst, dst=l3.src) / ICMP(type=3, code=3) / bytes(l3)[:548]
    else:
        return delivered
    return bytes(Ether(src=pkt.dst, dst=pkt.src) / err)
