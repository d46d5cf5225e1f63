"""Shared fixtures. The real BPF programs are compiled once per session, only when a test asks,
against maps pinned under a unique root that is removed afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from controlplane.datapath.config import DatapathConfig
from controlplane.datapath.maps import Maps
from controlplane.datapath.programs import compile_program
from controlplane.datapath.sync import Syncer
from tests.kernel import owned, reap, remove_pins

# What needs root, bcc and a BPF-capable kernel (the `kernel` marker): every test under
# these directories, and any test elsewhere that uses one of these fixtures. The rest (the
# pure layers: model, sources, l2's logic, the servers) runs anywhere: pytest -m "not kernel".
KERNEL_DIRS = {"bpf", "netns", "fuzz", "datapath"}
KERNEL_FIXTURES = {"xdp", "tc", "maps", "syncer", "dp_config", "scratch_root"}
PURE_MODULES = {"tests/datapath/test_constants.py"}  # datapath's numbers: read from text


def _repo_path(path) -> str:
    from tests.helpers import REPO

    return Path(str(path)).resolve().relative_to(REPO).as_posix()


def _kernel_module(path: str) -> bool:
    parts = path.split("/")
    return len(parts) > 2 and parts[1] in KERNEL_DIRS and path not in PURE_MODULES


def pytest_ignore_collect(collection_path, config) -> bool | None:
    """Under -m "not kernel", the kernel directories' modules are not even imported (they
    import bcc and scapy's raw sockets at the top)."""
    if "not kernel" not in (config.getoption("markexpr") or ""):
        return None
    if collection_path.suffix == ".py" and _kernel_module(_repo_path(collection_path)):
        return True
    return None


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        needs = _kernel_module(_repo_path(item.fspath)) or bool(
            KERNEL_FIXTURES & set(getattr(item, "fixturenames", ()))
        )
        if needs:
            item.add_marker(pytest.mark.kernel)


def pytest_configure(config) -> None:
    """SIGTERM (a CI timeout, a killed run) unwinds like Ctrl-C, so fixtures still remove
    their namespaces, pins and cgroups."""
    config.addinivalue_line(
        "markers", "kernel: needs root, bcc and a BPF-capable kernel (deselect: -m 'not kernel')"
    )

    def interrupt(*_) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


# Tests write nothing into the checkout: hypothesis keeps no example database, and its
# other caches go to a directory of this run's, removed at the end.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="xlb-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("xlb", database=None)
settings.load_profile("xlb")
# the agents' records for `xlb status` (controlplane/runstate.py): this run's own directory,
# inherited by every agent a test starts
_RUN_DIR = tempfile.mkdtemp(prefix="xlb-run-")
os.environ["XLB_RUN_DIR"] = _RUN_DIR


def _checkout_files() -> set[str] | None:
    """Every path git reports in the checkout, ignored ones too, but the interpreter's
    bytecode caches; None outside a git checkout."""
    from tests.helpers import REPO

    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--untracked=all"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line[3:] for line in out.stdout.splitlines() if "__pycache__/" not in line}


def pytest_sessionstart(session) -> None:
    session.config._xlb_checkout = _checkout_files()


def pytest_sessionfinish(session, exitstatus) -> None:
    """A test that wrote into the checkout fails the run, naming what it wrote."""
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    shutil.rmtree(_RUN_DIR, ignore_errors=True)
    before = getattr(session.config, "_xlb_checkout", None)
    after = _checkout_files()
    if before is None or after is None:
        return
    written = sorted(after - before)
    if written:
        print(f"\nerror: the tests wrote into the checkout: {', '.join(written[:20])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def dp_config() -> DatapathConfig:
    reap("/sys/fs/bpf", "xlb-test-")  # what runs killed outright (SIGKILL, bcc's exit) left
    return DatapathConfig(
        pin_root=f"/sys/fs/bpf/{owned('xlb-test-')}",
        max_services=1024,
        max_backends=1024,
        max_slots=8192,
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
    m.ct_new.clear()
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
