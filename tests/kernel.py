"""Kernel-state helpers for tests: unique names, network namespaces, pins; all removable."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

from controlplane.lab.topology import inside  # noqa: F401  (tests enter namespaces with it)


def unique(prefix: str, length: int = 15) -> str:
    """A name no other run uses: prefix, pid and randomness, cut to fit interface names."""
    tag = f"{os.getpid() % 10000:04d}{uuid.uuid4().hex[:6]}"
    return f"{prefix}{tag}"[:length]


def owned(prefix: str) -> str:
    """A name for long-lived state (pins, cgroups) that says which process made it, so a
    later run can remove what a run killed outright (bcc exits on compile errors) left."""
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def reap(parent: str, prefix: str) -> list[str]:
    """Removes entries under parent named by owned(prefix) whose process is gone."""
    removed = []
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            path = os.path.join(parent, name)
            if os.path.isdir(path) and parent.startswith("/sys/fs/cgroup"):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def netns(name: str | None = None) -> Iterator[str]:
    """A network namespace that is deleted afterwards, whatever happens."""
    name = name or unique("xlbt-")
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def remove_pins(root: str) -> None:
    if os.path.isdir(root):
        shutil.rmtree(root, ignore_errors=True)
