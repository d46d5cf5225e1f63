"""The agent's heap: a few million long-lived objects at 10,000 Services, built in bursts."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a translation, a sync or a read-back of the
    maps builds its objects: they are long-lived (frozen after the sync), yet every 700
    allocations would start a collection, and the older generations' walks over them took
    0.75 s of a 2.3 s full sync at 10,000 Services. Cycles made meanwhile are collected once
    it is back on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def release_memory() -> None:
    """Hands the heap's free pages back to the system: a compile (LLVM) or a big sync
    leaves tens of MB free but resident in the allocator otherwise (glibc only)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
