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


def test_without_its_table_a_group_picks_by_flow_hash_alike_on_every_node(
    xdp, maps, syncer, other_agent, dp_config
):
    """A group whose table is not built yet (due past the sync's budget, or right after an
    upgrade) is still balanced, by flow hash over its slots: the same choice on both agents,
    every backend used, nothing dropped."""
    program_b, syncer_b = other_agent
    syncer.sync(state(BACKENDS), NODE4, NODE6)
    syncer_b.sync(state(list(reversed(BACKENDS))), NODE4, NODE6)
    with_tables = choices(xdp, maps)
    for s in (syncer, syncer_b):  # as an upgrade leaves them, before the agent's first sync
        assert s.maps.maglev.remove(list({v.group for v in s.frontends.values()})) == 1
    a, b = choices(xdp, maps), choices(program_b, syncer_b.maps)
    assert a == b and len(set(a)) == len(BACKENDS)
    assert a != with_tables  # the slots' hash, not the table's
    restarted = Syncer(Maps.open(maps.pin_root), dp_config)  # the agent starts
    assert restarted.sync(state(BACKENDS), NODE4, NODE6).tables == 1
    assert choices(xdp, maps) == with_tables


def test_hundreds_of_maglev_groups_each_read_their_own_table(xdp, maps, syncer):
    """There used to be 64 rings; now every group has a table, and each frontend's flows go to
    its own backends only."""
    fes = tuple(
        frontend(NODE4, 31000 + i, "TCP", [local(f"10.245.{i // 100}.{i % 100 * 2 + k}", 80)
                                           for k in range(2)], service=f"default/m{i}")
        for i in range(300)
    )  # fmt: skip
    syncer.table_budget = 60
    res = syncer.sync(DesiredState(frontends=fes), NODE4, NODE6)
    assert res.tables_due == 0 and len(maps.maglev.installed()) == 300
    fd = xdp.functions["xdp_lb"].fd
    maps.ct.clear()
    maps.ct_new.clear()
    for fe in fes:
        own = {b.address for b in fe.backends}
        for sport in range(20000, 20004):
            out = prog_test_run(fd, bytes(tcp("198.51.100.7", sport, NODE4, fe.port)))
            assert Ether(out.data)[IP].dst in own, fe.port
    syncer.sync(DesiredState(), NODE4, NODE6)
    assert maps.maglev.installed() == {}
