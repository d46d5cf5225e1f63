"""`xlb monitor`: drops and rejects reported by the kernel through the pinned ring, each with
the flow as it arrived, its frontend and its reason; at most XLB_EVENT_RATE a second per CPU,
while the counters count every packet. The ring is read as the kernel lays it out (no bcc)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from controlplane.datapath import constants
from controlplane.datapath.events import EventRing
from controlplane.datapath.syscall import prog_test_run
from controlplane.model.objects import Protocol
from controlplane.model.state import Scope
from tests.bpf.packets import tcp, udp
from tests.bpf.test_xdp_lb import CLIENT4, CLIENT6, NODE4, NODE6, STATE, XDP_DROP, XDP_TX


@pytest.fixture
def ring(xdp, maps, syncer):
    syncer.sync(STATE, NODE4, NODE6)
    with EventRing(xdp.pin_root) as r:
        list(r.drain())  # what earlier tests left
        time.sleep(1.1)  # a full bucket
        yield r


def run(xdp, pkt) -> int:
    return prog_test_run(xdp.functions["xdp_lb"].fd, bytes(pkt)).retval


# (description, packet, verdict, reason, frontend (address, port, proto))
DROPS = [
    ("outside loadBalancerSourceRanges", tcp("198.51.100.9", 43000, "192.168.198.240", 80),
     XDP_DROP, "drop_source_range", ("192.168.198.240", 80, "TCP")),
    ("a frontend without endpoints: a RST", tcp(CLIENT4, 43001, "192.168.198.10", 80), XDP_TX,
     "reject_no_backend", ("192.168.198.10", 80, "TCP")),
    ("IPv6, UDP, without endpoints: port unreachable", udp(CLIENT6, 43002, "fd00:198::10", 53),
     XDP_TX, "reject_no_backend", ("fd00:198::10", 53, "UDP")),
    ("Local policy, no local endpoint", tcp(CLIENT4, 43003, "192.168.198.11", 80), XDP_DROP,
     "drop_no_backend", ("192.168.198.11", 80, "TCP")),
    ("a stray RST", tcp(CLIENT4, 43004, NODE4, 30080, flags="R"), XDP_DROP, "drop_not_syn",
     (NODE4, 30080, "TCP")),
]  # fmt: skip


def test_each_drop_and_reject_is_reported_with_its_flow_frontend_and_reason(xdp, syncer, ring):
    for description, pkt, verdict, _, _ in DROPS:
        assert run(xdp, pkt) == verdict, description
    events = list(ring.drain())
    assert len(events) == len(DROPS), events
    for (description, pkt, _, reason, (address, port, proto)), e in zip(DROPS, events, strict=True):
        l3 = pkt.payload
        svc = syncer.frontends[(address, port, Protocol(proto), Scope.EXTERNAL)].id
        assert (e.reason, e.frontend, e.protocol) == (reason, svc, proto), description
        assert (e.source, e.sport, e.destination, e.dport) == (
            l3.src, l3.payload.sport, l3.dst, l3.payload.dport), description  # fmt: skip
        assert e.hook == "xdp" and abs(e.stamp - time.time()) < 5
    print(events[0].line())
    # a packet that was balanced, or passed, is no event
    run(xdp, tcp(CLIENT4, 43010, NODE4, 30080))
    run(xdp, tcp(CLIENT4, 43011, "192.0.2.1", 80))
    assert list(ring.drain()) == []


def test_a_flood_is_reported_at_a_bounded_rate_and_counted_whole(xdp, maps, ring):
    rate, sent = constants.value("XLB_EVENT_RATE"), 3000
    before = maps.reason_counts()["drop_source_range"]
    pkt = bytes(tcp("198.51.100.9", 43100, "192.168.198.240", 80))
    fd = xdp.functions["xdp_lb"].fd
    start = time.monotonic()
    for _ in range(sent):
        prog_test_run(fd, pkt)
    seconds = time.monotonic() - start
    reported = len(list(ring.drain()))
    counted = maps.reason_counts()["drop_source_range"] - before
    print(f"{sent} drops in {seconds * 1000:.0f} ms: {reported} reported, {counted} counted")
    assert counted == sent
    assert rate <= reported <= rate + rate * seconds + 10


def test_xlb_monitor_prints_the_events(xdp, ring):
    for _, pkt, verdict, _, _ in DROPS[:3]:
        assert run(xdp, pkt) == verdict
    out = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "monitor", "--pin-root", xdp.pin_root, "--json",
         "--count", "3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["reason"] for e in lines] == [d[3] for d in DROPS[:3]]
    assert lines[0]["source"] == "198.51.100.9" and lines[0]["dport"] == 80
    missing = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "monitor", "--pin-root", "/nonexistent"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 1 and "is the datapath loaded" in missing.stderr


def test_status_and_metrics_show_each_frontends_new_flow_rate(xdp, maps, syncer):
    """`xlb status` measures new flows a second per frontend over --rate-interval; the
    agent's metrics export the same as a gauge, averaged between scrapes."""
    import threading

    from controlplane.datapath.status import collect, render
    from controlplane.serve import _MapsCollector

    syncer.sync(STATE, NODE4, NODE6)
    fd = xdp.functions["xdp_lb"].fd
    busy = syncer.frontends[(NODE4, 30080, Protocol.TCP, Scope.EXTERNAL)].id
    stop = threading.Event()
    sent = [0]

    def clients() -> None:
        port = 20000
        while not stop.is_set():
            prog_test_run(fd, bytes(tcp(CLIENT4, port, NODE4, 30080)))
            port, sent[0] = port + 1, sent[0] + 1
            time.sleep(0.002)

    collector = _MapsCollector(lambda: maps)
    list(collector.collect())  # the first scrape: no rate yet
    worker = threading.Thread(target=clients)
    worker.start()
    try:
        status = collect(maps, rate_interval=0.5)
        time.sleep(0.2)
        scraped = {m.name: m for m in collector.collect()}
    finally:
        stop.set()
        worker.join()
    rates = {f["id"]: f["newFlowsPerSecond"] for f in status["frontends"]}
    print(f"{sent[0]} flows sent; status: {rates[busy]}/s")
    assert rates[busy] > 50 and all(r == 0 for i, r in rates.items() if i != busy)
    assert "NEW/S" in render(status)
    gauge = {
        s.labels["frontend"]: s.value for s in scraped["xlb_frontend_new_flows_per_second"].samples
    }
    assert gauge[f"{NODE4}:30080"] > 50, gauge
    assert collect(maps)["frontends"][0]["newFlowsPerSecond"] is None  # not measured
