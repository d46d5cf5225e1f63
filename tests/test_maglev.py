"""Maglev table properties (NSDI'16 §3.4) and exactness against the paper's pseudocode."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.maglev import DEFAULT_M, build_table, is_prime, permutation_params
from tests.helpers import REPO


def reference_table(names, m, seed):
    """The paper's Pseudocode 1, written plainly."""
    params = permutation_params(names, m, seed)
    nxt, entry, filled = [0] * len(names), [-1] * m, 0
    while True:
        for i in range(len(names)):
            c = (params[i, 0] + nxt[i] * params[i, 1]) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (params[i, 0] + nxt[i] * params[i, 1]) % m
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return np.array(entry)


def names(n, prefix="10.0"):
    return [f"{prefix}.{i // 250}.{i % 250}:8080" for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), m=st.sampled_from([7, 13, 101, 251, 1021]), seed=st.integers(0, 2**32))
def test_identical_to_the_papers_algorithm(n, m, seed):
    backends = names(n)
    assert (build_table(backends, m, seed=seed) == reference_table(backends, m, seed)).all()


def test_size_must_be_prime_and_names_unique():
    with pytest.raises(ValueError, match="prime"):
        build_table(["a"], 16384)
    with pytest.raises(ValueError, match="unique"):
        build_table(["a", "a"], 13)
    assert is_prime(DEFAULT_M) and is_prime(65537) and not is_prime(1)


def test_no_backends_means_an_empty_table():
    assert (build_table([], 13) == -1).all()
    assert (build_table(["a", "b"], 13, weights=[0, 0]) == -1).all()


def test_deterministic_across_processes():
    code = (
        "import sys; from controlplane.maglev import build_table; "
        "sys.stdout.write(build_table([f'b{i}' for i in range(50)], 4099).tobytes().hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(outs) == 1
    assert bytes.fromhex(outs.pop()) == build_table([f"b{i}" for i in range(50)], 4099).tobytes()


@pytest.mark.parametrize("n", [3, 10, 100])
def test_each_backend_share_within_two_percent(n):
    m = DEFAULT_M
    assert m >= 100 * n
    counts = np.bincount(build_table(names(n), m), minlength=n)
    assert np.all(np.abs(counts - m / n) <= 0.02 * m / n), counts


def test_removing_one_of_100_moves_few_other_slots():
    before_names = names(100)
    before = build_table(before_names, DEFAULT_M)
    removed = 37
    after_names = before_names[:removed] + before_names[removed + 1 :]
    after = build_table(after_names, DEFAULT_M)
    before_by_name = np.array(before_names)[before]
    after_by_name = np.array(after_names)[after]
    not_owned = before != removed
    moved = np.sum(before_by_name[not_owned] != after_by_name[not_owned]) / np.sum(not_owned)
    assert moved <= 0.03, moved


def test_weights_are_respected():
    table = build_table(["a", "b", "c", "d"], DEFAULT_M, weights=[1, 2, 3, 0])
    share = np.bincount(table, minlength=4) / DEFAULT_M
    assert share[3] == 0
    assert np.allclose(share[:3], [1 / 6, 2 / 6, 3 / 6], atol=0.01), share


def test_table_sizes_step_with_the_backend_count_and_stop_at_the_largest():
    """100 slots a backend, from a ladder of primes about 4x apart, capped by --ring-size (a
    cap off the ladder is a size of its own)."""
    from controlplane.maglev import table_size

    got = {n: table_size(n) for n in (1, 2, 3, 10, 11, 40, 41, 163, 164, 1000)}
    assert got == {1: 251, 2: 251, 3: 1021, 10: 1021, 11: 4093, 40: 4093, 41: 16381,
                   163: 16381, 164: 16381, 1000: 16381}  # fmt: skip
    assert table_size(50, largest=1021) == 1021
    assert table_size(5, largest=251) == 251
    assert table_size(200, largest=65537) == 65521
    assert table_size(700, largest=65537) == 65537
    for n, m in got.items():
        assert is_prime(m) and (m >= 100 * n or m == 16381)


def test_a_fingerprint_names_every_input_of_a_table():
    from controlplane.maglev import fingerprint

    base = fingerprint(["a", "b"], [1, 2], 251)
    assert base == fingerprint(["a", "b"], [1, 2], 251)
    others = {
        fingerprint(["a", "c"], [1, 2], 251),
        fingerprint(["a", "b"], [1, 3], 251),
        fingerprint(["a", "b"], [1, 2], 1021),
        fingerprint(["a", "b"], [1, 2], 251, seed=7),
        fingerprint(["ab"], [12], 251),
        fingerprint(["b", "a"], [2, 1], 251),
    }
    assert base not in others and len(others) == 6


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 11, 40])
def test_at_its_size_no_backend_gets_over_one_percent_more_than_its_share(n):
    from controlplane.maglev import table_size

    m = table_size(n)
    counts = np.bincount(build_table([f"10.0.0.{i}:80" for i in range(n)], m), minlength=n)
    assert counts.max() - counts.min() <= 1
    assert counts.max() / (m / n) <= 1.01, (n, m, counts.max(), m / n)
