"""The only package that touches bcc: compiling, loading, attaching and programming BPF.

config (map sizes), constants (read from bpf/lib/*.h), programs and loader (compile),
attach (XDP, tc, cgroup links), maps and sync (DesiredState -> map writes), node (one node's
datapath), status and events (what the maps and the ring buffer say).

May import: model, maglev, heap, runstate, bcc. Nothing above."""

from __future__ import annotations

import sys
from types import ModuleType


class BccMissing(RuntimeError):
    """bcc cannot be imported; the message says how to get it."""


def import_bcc() -> ModuleType:
    """bcc, or one line saying how to install it (it is not on PyPI in a usable form)."""
    try:
        import bcc
    except ImportError:
        raise BccMissing(
            f"xlb: bcc is not importable from {sys.executable}: install Debian's python3-bpfcc "
            "(apt-get install python3-bpfcc) and run xlb from a venv made with "
            "`/usr/bin/python3 -m venv --system-site-packages` (`make setup` does both)"
        ) from None
    return bcc
