"""Nanoseconds per packet in the kernel for each path of xdp_lb and tc_lb, as measured by
BPF_PROG_TEST_RUN itself (program time only). `make bench`; never part of `make test`.

Targets (issue "Benchmarks"): established flow ≤ 80 ns, new flow ≤ 200 ns.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import Algorithm, Backend, DesiredState
from tests.bpf.packets import CLIENT_MAC, NODE_MAC, tcp
from tests.bpf.test_dsr import carried4
from tests.bpf.test_xdp_forward import lan  # noqa: F401  (fixture: routes for the FIB)
from tests.bpf.test_xdp_lb import CLIENT4, NODE4, NODE6, XDP_PASS, XDP_TX, frontend, local

RUNS = 3000
BACKENDS = [local(f"10.244.1.{i}", 8080) for i in range(1, 11)]
# on node-2 (routed by the lan fixture), which runs xlb: DSR may reach them
REMOTE = [Backend(f"10.244.2.{i}", 8080, "node-2", False, dsr=True) for i in range(1, 11)]
LB4 = "192.168.198.240"
STATE = DesiredState(
    frontends=(
        frontend(NODE4, 30080, "TCP", BACKENDS),
        # a backend that is the frontend itself: DNAT rewrites a packet to the same tuple, so a
        # long repeat stays on the established path with all its work
        frontend(NODE4, 30099, "TCP", [local(NODE4, 30099)]),
        frontend(NODE4, 30081, "TCP", BACKENDS, algorithm=Algorithm.RANDOM, affinity_timeout=600),
        frontend(NODE4, 30200, "TCP", REMOTE, dsr=True),  # balanced here, by DSR
        frontend(NODE4, 30201, "TCP", REMOTE),  # the same by SNAT
        # this node as a DSR backend's node: carriers naming the LB IP come off here
        frontend(LB4, 443, "TCP", [local("10.244.1.5", 8443)], dsr=True, kind="LoadBalancer"),
        *(
            frontend(
                f"192.168.{200 + i // 250}.{i % 250}",
                80,
                "TCP",
                BACKENDS[:2],
                algorithm=Algorithm.RANDOM,
            )
            for i in range(500)
        ),
    )
)


def median_ns(fd: int, packets: list[bytes], ifindex: int = 0) -> float:
    return statistics.median(prog_test_run(fd, p, ifindex=ifindex).duration_ns for p in packets)


def repeated_ns(fd: int, packet: bytes, repeat: int = 100000, rounds: int = 5) -> float:
    """The median over rounds of the kernel's mean per run of `repeat` runs of one packet."""
    return statistics.median(prog_test_run(fd, packet, repeat).duration_ns for _ in range(rounds))


@pytest.fixture(scope="module")
def programmed(xdp, tc, dp_config, lan):  # noqa: F811
    from controlplane.datapath.maps import Maps
    from controlplane.datapath.sync import Syncer

    maps = Maps.open(xdp.pin_root)
    maps.ct.clear()
    maps.ct_new.clear()
    Syncer(maps, dp_config).sync(STATE, NODE4, NODE6)
    return xdp.functions["xdp_lb"].fd, tc.functions["tc_lb"].fd


MEASURED: dict[str, float] = {}  # this run's figures, written to bench/results at the end
RESULTS = Path(__file__).parent / "results"
# What each figure is, for the table; targets from the issue "Benchmarks".
PATHS = {
    "established": ("XDP, established flow (repeat 100,000, median of 5)", "≤ 80 ns"),
    "not_a_service": ("XDP, packet to no Service (repeat 100,000, median of 5)", ""),
    "new_flow_maglev": ("XDP, new flow with Maglev (single runs, median of 3,000)", "≤ 200 ns"),
    "new_flow_affinity_hit": ("XDP, new flow, session-affinity hit (single runs)", ""),
    "reply_translation_tc": ("tc, reply translation (single runs)", ""),
    "new_flow_dsr": (
        "XDP, new flow to a remote backend by DSR: DNAT, carrier, FIB (single runs)",
        "≤ one-insert floor + 150 ns + harness",
    ),
    "new_flow_snat_remote": ("XDP, the same by SNAT: a port probed, two inserts (single runs)", ""),
    "established_dsr": ("XDP, established DSR flow: DNAT, carrier, FIB (single runs)", ""),
    "dsr_decap": ("XDP, the backend's node: a carried packet of a known flow (single runs)", ""),
    "repeat1_overhead": ("what a single run adds over a repeated one (harness)", ""),
    "floor_empty": ("floor: an empty XDP program", ""),
    "floor_lru_hit": ("floor: one LRU hit, conntrack-sized", ""),
    "floor_lru_insert": ("floor: one LRU insert, conntrack-sized", ""),
    "floor_hash_insert": ("floor: one plain hash insert, conntrack-sized", ""),
}


def record(benchmark, name: str, ns: float) -> None:
    benchmark.extra_info[name] = round(ns, 1)
    MEASURED[name] = round(ns, 1)
    print(f"\n{name}: {ns:.1f} ns/packet")


@pytest.fixture(scope="module", autouse=True)
def written():
    """After the module: the figures as JSON and a markdown table under bench/results/, when
    every path was measured (a -k selection writes nothing)."""
    import json
    import os
    import platform
    import time

    yield
    if set(MEASURED) != set(PATHS):
        return
    machine = (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}"
    )
    when = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "per-packet.json").write_text(
        json.dumps({"machine": machine, "time": when, "ns": MEASURED}, indent=2) + "\n"
    )
    rows = [
        f"Measured on {machine}, {when}, by `make bench` (bench/test_datapath_cost.py):",
        "BPF_PROG_TEST_RUN's own time per run, the harness included.",
        "",
        "| path | ns per packet | target |",
        "|---|---|---|",
        *(
            f"| {what} | {MEASURED[name]:.0f} | {target} |"
            for name, (what, target) in PATHS.items()
        ),
    ]
    (RESULTS / "per-packet.md").write_text("\n".join(rows) + "\n")


def test_not_a_service(benchmark, programmed):
    fd, _ = programmed
    pkt = bytes(tcp(CLIENT4, 1234, NODE4, 22))
    ns = benchmark.pedantic(repeated_ns, (fd, pkt), rounds=1, iterations=1)
    record(benchmark, "not_a_service", ns)


def test_new_flow_maglev(benchmark, programmed):
    fd, _ = programmed
    packets = [
        bytes(tcp(f"198.18.{i // 250}.{i % 250}", 10000 + i % 50000, NODE4, 30080))
        for i in range(RUNS)
    ]
    ns = benchmark.pedantic(median_ns, (fd, packets), rounds=1, iterations=1)
    record(benchmark, "new_flow_maglev", ns)


def test_new_flow_affinity_hit(benchmark, programmed):
    fd, _ = programmed
    prog_test_run(fd, bytes(tcp(CLIENT4, 9, NODE4, 30081)))  # pins the client
    packets = [bytes(tcp(CLIENT4, 20000 + i, NODE4, 30081)) for i in range(RUNS)]
    ns = benchmark.pedantic(median_ns, (fd, packets), rounds=1, iterations=1)
    record(benchmark, "new_flow_affinity_hit", ns)


def handshake(fd: int, tc_fd: int, client_port: int, dport: int) -> Ether:
    """A connection's three steps (the SYN and ACK through xdp_lb, the backend's SYN-ACK
    through tc_lb): its entries are then in the established table. The delivered SYN."""
    syn = Ether(prog_test_run(fd, bytes(tcp(CLIENT4, client_port, NODE4, dport))).data)
    synack = (
        Ether(src=NODE_MAC, dst=CLIENT_MAC)
        / IP(src=syn[IP].dst, dst=CLIENT4)
        / TCP(sport=syn[TCP].dport, dport=client_port, flags="SA")
    )
    prog_test_run(tc_fd, bytes(synack))
    prog_test_run(fd, bytes(tcp(CLIENT4, client_port, NODE4, dport, flags="A")))
    return syn


def test_established_flow(benchmark, programmed):
    fd, tc_fd = programmed
    handshake(fd, tc_fd, 40000, 30099)
    ack = bytes(tcp(CLIENT4, 40000, NODE4, 30099, flags="A", payload=b"x" * 100))
    assert prog_test_run(fd, ack).data == ack  # really the established rewrite, every time
    ns = benchmark.pedantic(repeated_ns, (fd, ack), rounds=1, iterations=1)
    record(benchmark, "established", ns)


def test_timer_overhead_of_single_runs(benchmark, programmed):
    """What a repeat=1 measurement adds: subtract it from the new-flow figures."""
    fd, _ = programmed
    pkt = bytes(tcp(CLIENT4, 1234, NODE4, 22))
    single = benchmark.pedantic(median_ns, (fd, [pkt] * RUNS), rounds=1, iterations=1)
    record(benchmark, "repeat1_overhead", single - repeated_ns(fd, pkt))


def test_reply_translation_tc(benchmark, programmed):
    fd, tc_fd = programmed
    out = handshake(fd, tc_fd, 41000, 30080)
    reply = bytes(
        Ether(src=NODE_MAC, dst=CLIENT_MAC)
        / IP(src=out[IP].dst, dst=CLIENT4)
        / TCP(sport=out[TCP].dport, dport=41000, flags="A")
        / (b"y" * 100)
    )
    ns = benchmark.pedantic(median_ns, (tc_fd, [reply] * RUNS), rounds=1, iterations=1)
    record(benchmark, "reply_translation_tc", ns)


def remote_new_flows_ns(benchmark, fd: int, ifindex: int, net: str, port: int) -> float:
    """New flows from clients of net (198.x) to a NodePort whose backends are on node-2, each
    forwarded out of the uplink (single runs)."""
    packets = [
        bytes(tcp(f"{net}.{i // 250}.{i % 250}", 10000 + i % 50000, NODE4, port))
        for i in range(RUNS)
    ]
    assert prog_test_run(fd, packets[-1], ifindex=ifindex).retval == XDP_TX
    return benchmark.pedantic(median_ns, (fd, packets[:-1], ifindex), rounds=1, iterations=1)


def test_new_flow_dsr(benchmark, programmed, lan):  # noqa: F811
    fd, _ = programmed
    record(benchmark, "new_flow_dsr", remote_new_flows_ns(benchmark, fd, lan[1], "198.19", 30200))


def test_new_flow_snat_remote(benchmark, programmed, lan):  # noqa: F811
    fd, _ = programmed
    ns = remote_new_flows_ns(benchmark, fd, lan[1], "198.20", 30201)
    record(benchmark, "new_flow_snat_remote", ns)


def test_established_dsr(benchmark, programmed, lan):  # noqa: F811
    """Its SYN and the client's ACK (a lone entry: the ACK establishes it), then ACKs with
    data: each is DNATed and carried anew (single runs: the carrier grows the packet, so a
    repeat would not run the same packet twice)."""
    fd, _ = programmed
    _, ifindex, _ = lan
    prog_test_run(fd, bytes(tcp(CLIENT4, 42000, NODE4, 30200)), ifindex=ifindex)
    ack = bytes(tcp(CLIENT4, 42000, NODE4, 30200, flags="A", payload=b"x" * 100))
    assert prog_test_run(fd, ack, ifindex=ifindex).retval == XDP_TX
    ns = benchmark.pedantic(median_ns, (fd, [ack] * RUNS, ifindex), rounds=1, iterations=1)
    record(benchmark, "established_dsr", ns)


def test_dsr_decap(benchmark, programmed):
    """A DSR flow's packet at its backend's node: the carrier comes off, the flow's entry is
    found (the first packet made it), the packet goes to the stack."""
    fd, _ = programmed
    to_pod = tcp(CLIENT4, 43000, "10.244.1.5", 8443, flags="A", payload=b"x" * 100)
    pkt = bytes(carried4(to_pod, LB4, 443))
    out = prog_test_run(fd, pkt)
    assert out.retval == XDP_PASS and out.data == bytes(to_pod)
    ns = benchmark.pedantic(median_ns, (fd, [pkt] * RUNS), rounds=1, iterations=1)
    record(benchmark, "dsr_decap", ns)


@pytest.fixture(scope="module")
def floor():
    import bcc

    bpf = bcc.BPF(src_file=str(Path(__file__).parent / "bpf" / "floor.c").encode())
    key = bpf[b"floor_lru"].Key()
    bpf[b"floor_lru"][key] = bpf[b"floor_lru"].Leaf()  # the entry floor_lru_hit finds
    yield bpf
    bpf.cleanup()


@pytest.mark.parametrize(
    "name", ["floor_empty", "floor_lru_hit", "floor_lru_insert", "floor_hash_insert"]
)
def test_map_floor(benchmark, floor, name):
    """The kernel's own costs here, for reading the figures above: the harness (an empty
    program), one conntrack-sized LRU hit, and one insert (a new flow makes two). 200,001
    inserts fill a fifth of the map: no eviction is measured."""
    import bcc

    fd = floor.load_func(name.encode(), bcc.BPF.XDP).fd
    pkt = bytes(tcp(CLIENT4, 1234, NODE4, 22))
    assert prog_test_run(fd, pkt).retval == 2  # XDP_PASS: the lookup hit, the insert was taken
    ns = benchmark.pedantic(repeated_ns, (fd, pkt, 40000), rounds=1, iterations=1)
    record(benchmark, name, ns)
