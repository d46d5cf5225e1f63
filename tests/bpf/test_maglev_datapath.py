"""Maglev in the kernel: two agents agree on every flow, and a removed backend moves few
flows it did not own."""

from __future__ import annotations

import bcc
import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from controlplane.datapath.config import DatapathConfig
from controlplane.datapath.maps import Maps
from controlplane.datapath.programs import compile_program
from controlplane.datapath.sync import Syncer
from controlplane.datapath.syscall import prog_test_run
from controlplane.model.state import DesiredState
from tests.bpf.packets import tcp
from tests.bpf.test_xdp_lb import NODE4, NODE6, frontend, local
from tests.kernel import owned, remove_pins

BACKENDS = [local(f"10.244.1.{i}", 8080) for i in range(1, 31)]
FLOWS = [(f"198.51.{i // 200}.{i % 200 + 1}", 20000 + i) for i in range(3000)]


def state(backends) -> DesiredState:
    return DesiredState(frontends=(frontend(NODE4, 30080, "TCP", backends),))


@pytest.fixture(scope="module")
def other_agent(dp_config):
    """A second, independent agent: its own compile, its own pinned maps."""
    cfg = DatapathConfig(**{**dp_config.__dict__, "pin_root": f"/sys/fs/bpf/{owned('xlb-test-')}"})
    try:
        program = compile_program("xdp_lb.c", cfg)
        program.function("xdp_lb", bcc.BPF.XDP)
        yield program, Syncer(Maps.open(program.pin_root), cfg)
        program.cleanup()
    finally:
        remove_pins(cfg.pin_root)


def choices(program, maps) -> list[str]:
    maps.ct.clear()
    maps.ct_new.clear()
    fd = program.functions["xdp_lb"].fd
    return [
        Ether(prog_test_run(fd, bytes(tcp(src, sport, NODE4, 30080))).data)[IP].dst
        for src, sport in FLOWS
    ]


def test_two_agents_choose_the_same_backend_for_every_flow(xdp, maps, syncer, other_agent):
    program_b, syncer_b = other_agent
    syncer.sync(state(BACKENDS), NODE4, NODE6)
    syncer_b.sync(state(list(reversed(BACKENDS))), NODE4, NODE6)  # order must not matter
    a, b = choices(xdp, maps), choices(program_b, syncer_b.maps)
    assert a == b
    assert len(set(a)) == len(BACKENDS)  # and every backend gets flows


def test_removing_one_backend_keeps_97_percent_of_the_other_flows(xdp, maps, syncer):
    syncer.sync(state(BACKENDS), NODE4, NODE6)
    before = choices(xdp, maps)
    gone = BACKENDS[7].address
    syncer.sync(state(BACKENDS[:7] + BACKENDS[8:]), NODE4, NODE6)
    after = choices(xdp, maps)
    kept = [a == b for a, b in zip(before, after, strict=True) if a != gone]
    assert sum(kept) / len(kept) >= 0.97, sum(kept) / len(kept)
    assert gone not in after
