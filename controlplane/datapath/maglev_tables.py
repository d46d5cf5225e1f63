"""The backend groups' Maglev tables in the kernel: maps.h's xlb_maglev, a hash of maps from
group id to an array of the group's own size (BPF_F_INNER_MAP lets the sizes differ).

A table of a new size is a new array, filled whole and swapped in by an update of the outer
map, so a packet sees the old table or the new one. A table of the same size (a backend
replaced or added within its size step: the common change) is rewritten in place instead,
because the kernel waits out an RCU grace period after every update of a map of maps from
user space (about 8 ms on these machines, more than a whole endpoint change otherwise
costs). In place, a packet in the microseconds of the write may read an entry of either
table; both name live backends of the group (the sync deletes backends only after), so a
new flow goes where it would have gone a moment earlier or later, and the header row, with
the fingerprint, is written last. The outer map holds the only reference the agent does
not: deleting a group's entry frees its table.

Layout of one table (rows of LANES u32s): row 0 is [M, fingerprint low, fingerprint high, 0],
rows 1.. hold the M backend ids in order, LANES a row, the last row padded with zeros.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os

import numpy as np

from .constants import value
from .pinned import PinnedTable
from .syscall import (
    MAP_DELETE_BATCH,
    MAP_F_INNER_MAP,
    MAP_LOOKUP,
    MAP_LOOKUP_BATCH,
    MAP_TYPE_ARRAY,
    MAP_UPDATE_BATCH,
    map_batch,
    map_create,
    map_elem,
    map_fd_by_id,
    map_info,
)

LANES = value("XLB_MAGLEV_LANES")
ROW = 4 * LANES  # bytes
BATCH = 512  # tables swapped in by one update (each holds a file descriptor until then)


def rows_of(table: np.ndarray, fingerprint: int) -> np.ndarray:
    """The array a table is written as (uint32, one row of LANES per entry): the header row,
    then the ids. Pure."""
    m = len(table)
    rows = np.zeros((1 + -(-m // LANES)) * LANES, dtype=np.uint32)
    rows[:3] = (m, fingerprint & 0xFFFFFFFF, fingerprint >> 32)
    rows[LANES : LANES + m] = table
    return rows


def table_bytes(m: int) -> int:
    """The kernel memory of a table of M entries (its rows; the map's own header aside)."""
    return (1 + -(-m // LANES)) * ROW


class MaglevTables:
    """The outer map, by group id."""

    def __init__(self, outer: PinnedTable) -> None:
        self.outer = outer

    def install(self, tables: list[tuple[int, np.ndarray, int]]) -> int:
        """Swaps in a table for each (group, backend ids, fingerprint): each is built whole in
        an array of its own, then all are swapped in by BATCH updates of the outer map. (The
        kernel waits out an RCU grace period after every update of a map of maps from user
        space, about 8 ms here: one by one, 1,000 tables would take 8 s.) The bytes they take."""
        size = 0
        for at in range(0, len(tables), BATCH):
            size += self._install(tables[at : at + BATCH])
        return size

    def _install(self, tables: list[tuple[int, np.ndarray, int]]) -> int:
        fds: list[int] = []
        size = 0
        try:
            for group, table, fingerprint in tables:
                rows = rows_of(np.ascontiguousarray(table, dtype=np.uint32), fingerprint)
                count = len(rows) // LANES
                fd = map_create(MAP_TYPE_ARRAY, 4, ROW, count, "xlb_maglev_t", MAP_F_INNER_MAP)
                fds.append(fd)
                keys = np.arange(count, dtype=np.uint32)
                done, _ = map_batch(MAP_UPDATE_BATCH, fd, keys.ctypes.data, rows.ctypes.data, count)
                if done != count:
                    raise OSError(errno.EIO, f"Maglev table of group {group}: {done} of {count}")
                size += count * ROW
            groups = np.array([group for group, _, _ in tables], dtype=np.uint32)
            values = np.array(fds, dtype=np.uint32)
            done, _ = map_batch(
                MAP_UPDATE_BATCH, self.outer.fd, groups.ctypes.data, values.ctypes.data, len(fds)
            )
            if done != len(fds):
                raise OSError(errno.EIO, f"Maglev tables: {done} of {len(fds)} swapped in")
        finally:
            for fd in fds:  # the outer map holds them now (or nothing does: they are freed)
                os.close(fd)
        return size

    def rewrite(self, group: int, table: np.ndarray, fingerprint: int) -> bool:
        """Writes the group's table over the one it has, of the same size, in place: the
        rows of ids first, the header with the new fingerprint last. False (nothing written)
        when it has none or one of another size."""
        rows = rows_of(np.ascontiguousarray(table, dtype=np.uint32), fingerprint)
        count = len(rows) // LANES
        fd = self._inner(group)
        if fd is None:
            return False
        try:
            if map_info(fd).max_entries != count:
                return False
            keys = np.concatenate([np.arange(1, count, dtype=np.uint32), np.zeros(1, np.uint32)])
            ordered = np.concatenate([rows[LANES:], rows[:LANES]])
            done, _ = map_batch(MAP_UPDATE_BATCH, fd, keys.ctypes.data, ordered.ctypes.data, count)
            if done != count:
                raise OSError(errno.EIO, f"Maglev table of group {group}: {done} of {count}")
            return True
        finally:
            os.close(fd)

    def remove(self, groups: list[int]) -> int:
        """Drops these groups' tables (their frontends fall back to the slots), by BATCH
        deletes; a group without one is skipped. How many were dropped."""
        dropped, todo = 0, np.array(sorted(set(groups)), dtype=np.uint32)
        while len(todo):
            done, missing = map_batch(
                MAP_DELETE_BATCH, self.outer.fd, todo.ctypes.data, 0, len(todo)
            )
            dropped += done
            # ENOENT: the kernel stopped at a key it does not hold; skip it and go on
            todo = todo[done + 1 :] if missing else todo[:0]
        return dropped

    def installed(self) -> dict[int, tuple[int, int]]:
        """group -> (M, fingerprint) of every table in the kernel (a restarted agent's view)."""
        out = {}
        for key in self.outer:
            group = int(getattr(key, "value", key))
            head = self._rows(group, 1)
            if head is not None:
                out[group] = (int(head[0]), int(head[1]) | int(head[2]) << 32)
        return out

    def read(self, group: int) -> np.ndarray | None:
        """The group's table as the kernel holds it (M backend ids), or None."""
        head = self._rows(group, 1)
        if head is None:
            return None
        m = int(head[0])
        rows = self._rows(group, 1 + -(-m // LANES))
        return None if rows is None else rows[LANES : LANES + m].copy()

    def _inner(self, group: int) -> int | None:
        """A new file descriptor of the group's table (the caller closes it), or None."""
        key, map_id = ct.c_uint32(group), ct.c_uint32()
        if not map_elem(MAP_LOOKUP, self.outer.fd, ct.addressof(key), ct.addressof(map_id)):
            return None
        try:
            return map_fd_by_id(map_id.value)
        except FileNotFoundError:
            return None  # swapped out and freed since the lookup

    def _rows(self, group: int, count: int) -> np.ndarray | None:
        """The first count rows of the group's table, flat, or None when it has none."""
        fd = self._inner(group)
        if fd is None:
            return None
        try:
            rows = np.zeros(count * LANES, dtype=np.uint32)
            if count == 1:
                zero = ct.c_uint32(0)
                map_elem(MAP_LOOKUP, fd, ct.addressof(zero), rows.ctypes.data)
                return rows
            keys = np.zeros(count, dtype=np.uint32)
            out_batch = ct.c_uint32()
            done, _ = map_batch(
                MAP_LOOKUP_BATCH, fd, keys.ctypes.data, rows.ctypes.data, count,
                out_batch=ct.addressof(out_batch),
            )  # fmt: skip
            return rows if done == count else None
        finally:
            os.close(fd)
