"""Maglev consistent hashing (Eisenbud et al., NSDI'16): the lookup table, pure and deterministic.

Each backend's preference list is the permutation slot_j = (offset + j * skip) mod M, where
offset and skip come from a keyed BLAKE2b of the backend's stable name (never Python's hash(),
which changes per process), so every node computes the identical table from the same names.
Backends take turns claiming their next preferred free slot until the table is full; a weight
w gives a backend a turn in w of every w_max rounds.

The fill is sequential by nature. It stays exact but fast: a backend's next candidate slots
are computed in numpy blocks, keeping only those still free, so the Python loop touches almost
only slots it will claim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

DEFAULT_M = 16381
# The sizes a group's table takes, smallest first: primes about 4x apart, so that a table is
# rebuilt at another size (which moves flows that have no conntrack entry, as a new table of
# any size would) only when its backend count crosses a step, not with every backend added.
TABLE_SIZES = (251, 1021, 4093, 16381, 65521)
SLOTS_PER_BACKEND = 100  # the paper's M >> N: at 100, no backend gets over ~1% more than its share
DEFAULT_SEED = 0x786C62  # "xlb": the same on every node so that all nodes pick alike
_BLOCK_FREE_MIN, _BLOCK_FREE_MAX = 16, 128  # free slots one refill aims to find


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_size(backends: int, largest: int = DEFAULT_M) -> int:
    """The Maglev M for a group of this many backends: the smallest of TABLE_SIZES (those
    below `largest`, then `largest` itself) with SLOTS_PER_BACKEND slots a backend, else
    `largest`. The same on every node for the same count and `largest`."""
    sizes = [s for s in TABLE_SIZES if s < largest] + [largest]
    return next((s for s in sizes if s >= SLOTS_PER_BACKEND * backends), largest)


def fingerprint(
    names: Sequence[str], values: Sequence[int], m: int, seed: int = DEFAULT_SEED
) -> int:
    """64 bits that name a table's inputs (backend names, the values it holds for them, M and
    the seed): a table read back with the same fingerprint needs no rebuild."""
    h = hashlib.blake2b(digest_size=8, key=b"xlb maglev table")
    h.update(f"{m}\0{seed}\0".encode())
    for name, value in zip(names, values, strict=True):
        h.update(f"{name}\0{value}\0".encode())
    return int.from_bytes(h.digest(), "little")


def permutation_params(names: Sequence[str], m: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(offset, skip) per name, shape (N, 2): skip in [1, M-1] is coprime with prime M, so each
    permutation visits every slot exactly once."""
    key = seed.to_bytes(8, "little", signed=False)
    out = np.empty((len(names), 2), dtype=np.int64)
    for i, name in enumerate(names):
        digest = hashlib.blake2b(name.encode(), digest_size=16, key=key).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little")
        out[i] = (h1 % m, h2 % (m - 1) + 1)
    return out


def _turns(weights: list[int]) -> list[list[int]]:
    """Which backends take a turn in each round of one period of w_max rounds."""
    w_max = max(weights)
    if all(w == w_max for w in weights):
        return [list(range(len(weights)))]
    return [
        [i for i, w in enumerate(weights) if (r + 1) * w // w_max > r * w // w_max]
        for r in range(w_max)
    ]


def build_table(
    names: Sequence[str],
    m: int = DEFAULT_M,
    weights: Sequence[int] | None = None,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """The Maglev table: an int32 array of length m holding indices into `names`
    (-1 everywhere when there is no backend with a positive weight)."""
    if not is_prime(m):
        raise ValueError(f"Maglev table size must be prime, got {m}")
    n = len(names)
    if len(set(names)) != n:
        raise ValueError("backend names must be unique")
    w = [1] * n if weights is None else [int(x) for x in weights]
    if len(w) != n or any(x < 0 for x in w):
        raise ValueError("weights must be one non-negative integer per backend")
    table = np.full(m, -1, dtype=np.int32)
    if n == 0 or max(w, default=0) == 0:
        return table

    params = permutation_params(names, m, seed)
    offsets, skips = params[:, 0], params[:, 1]
    taken = bytearray(m)
    taken_view = np.frombuffer(taken, dtype=np.uint8)  # shares memory with `taken`
    owner = [-1] * m
    next_j = [0] * n  # next position in each backend's permutation not yet examined
    buffers: list[list[int]] = [[] for _ in range(n)]
    cursor = [0] * n
    filled = 0

    def refill(i: int) -> list[int]:
        free = m - filled
        # Aim for about the claims this backend has left, within bounds: bigger blocks mean
        # fewer numpy calls, but more buffered slots that others take in the meantime.
        want = min(_BLOCK_FREE_MAX, max(_BLOCK_FREE_MIN, free // n))
        while True:
            j0 = next_j[i]
            span = min(m - j0, max(want, want * m // free))
            slots = (offsets[i] + np.arange(j0, j0 + span, dtype=np.int64) * skips[i]) % m
            next_j[i] = j0 + span
            found = slots[taken_view[slots] == 0].tolist()
            if found:
                return found

    turns = _turns(w)
    while filled < m:
        for members in turns:
            for i in members:
                buf, k = buffers[i], cursor[i]
                while True:
                    if k == len(buf):
                        buf, k = refill(i), 0
                        buffers[i] = buf
                    slot = buf[k]
                    k += 1
                    if not taken[slot]:
                        break
                cursor[i] = k
                taken[slot] = 1
                owner[slot] = i
                filled += 1
                if filled == m:
                    break
            if filled == m:
                break
    table[:] = owner
    return table
