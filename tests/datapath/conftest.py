"""Fixtures of the datapath tests: a pin root of their own, small map sizes."""

from __future__ import annotations

import os
import subprocess

import pytest

from controlplane.datapath.config import DatapathConfig
from tests.kernel import owned


def small_config(root: str) -> DatapathConfig:
    """Maps small enough to compile and load in a moment."""
    return DatapathConfig(
        pin_root=root,
        max_services=256,
        max_backends=256,
        max_slots=1024,
        ct_size=1024,
        affinity_size=256,
        max_source_ranges=16,
    )


@pytest.fixture
def scratch_root():
    """A pin root no other test or run uses, removed with whatever a loader left beside it."""
    root = f"/sys/fs/bpf/{owned('xlb-test-')}"  # a killed run's: reaped by the next
    os.makedirs(root)
    yield root
    subprocess.run(["sh", "-c", f"rm -rf {root} {root}_next_*"], check=False)
