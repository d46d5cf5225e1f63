"""Shared fixtures. The real BPF programs are compiled once per session, only when a test asks,
against maps pinned under a unique root that is removed afterwards."""

from __future__ import annotations

import signal

import pytest

from controlplane.datapath.config import DatapathConfig
from controlplane.datapath.maps import Maps
from controlplane.datapath.programs import compile_program
from controlplane.datapath.sync import Syncer
from tests.kernel import owned, reap, remove_pins


def pytest_configure(config) -> None:
    """SIGTERM (a CI timeout, a killed run) unwinds like Ctrl-C, so fixtures still remove
    their namespaces, pins and cgroups."""

    def interrupt(*_) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def dp_config() -> DatapathConfig:
    reap("/sys/fs/bpf", "xlb-test-")  # what runs killed outright (SIGKILL, bcc's exit) left
    return DatapathConfig(
        pin_root=f"/sys/fs/bpf/{owned('xlb-test-')}",
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
    m = Maps.open(xdp.pin_root)
    m.ct.clear()
    m.affinity.clear()
    yield m
    m.close()


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
