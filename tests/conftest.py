"""Shared fixtures. The real BPF programs are compiled once per session, only when a test asks,
against maps pinned under a unique root that is removed afterwards."""

from __future__ import annotations

import pytest

from controlplane.datapath.config import DatapathConfig
from controlplane.datapath.maps import Maps
from controlplane.datapath.programs import compile_program
from controlplane.datapath.sync import Syncer
from tests.kernel import remove_pins, unique


@pytest.fixture(scope="session")
def dp_config() -> DatapathConfig:
    return DatapathConfig(
        pin_root=f"/sys/fs/bpf/{unique('xlb-test-', 40)}",
        max_services=1024,
        max_backends=1024,
        max_slots=8192,
        max_rings=4,
        ct_size=65536,
        affinity_size=4096,
        max_source_ranges=256,
    )


@pytest.fixture(scope="session")
def xdp(dp_config):
    import bcc

    try:
        program = compile_program("xdp_lb.c", dp_config)
        program.function("xdp_lb", bcc.BPF.XDP)
        yield program
        program.cleanup()
    finally:
        remove_pins(dp_config.pin_root)


@pytest.fixture
def maps(xdp) -> Maps:
    m = Maps(xdp)
    m.ct.clear()
    m.affinity.clear()
    return m


@pytest.fixture
def syncer(maps, dp_config) -> Syncer:
    return Syncer(maps, dp_config)


@pytest.fixture(scope="session")
def tc(xdp, dp_config):
    """tc_lb, sharing xdp_lb's pinned maps (compiled after it, so the pins exist)."""
    import bcc

    program = compile_program("tc_lb.c", dp_config)
    program.function("tc_lb", bcc.BPF.SCHED_CLS)
    yield program
    program.cleanup()
