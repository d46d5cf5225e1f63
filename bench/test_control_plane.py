"""Control-plane benchmarks (pytest-benchmark): `make bench`, never part of `make test`.

Targets: build_table m=16381 N=100 ≤ 10 ms; m=65537 N=1000 ≤ 100 ms; translate of 10,000
Services × 10 endpoints ≤ 1 s; full sync of 10,000 × 10 into the real maps ≤ 2 s; one
endpoint change → maps ≤ 20 ms p99 (bench/controlplane.py reports the distribution).
"""

from __future__ import annotations

import time

import pytest

from bench.controlplane import NODE, change_one_endpoint, cluster, real_maps
from controlplane.heap import collector_paused
from controlplane.maglev import build_table
from controlplane.model import Translator, translate
from controlplane.model.snapshot import Changes, new_lineage


@pytest.mark.parametrize("m,n", [(16381, 100), (65537, 1000)])
def test_build_table(benchmark, m, n):
    names = [f"10.1.{i // 256}.{i % 256}:8080" for i in range(n)]
    table = benchmark(build_table, names, m)
    assert len(table) == m and table.min() == 0


@pytest.mark.parametrize("services", [1000, 10000])
def test_translate(benchmark, services):
    svcs, slices = cluster(services, 10)

    def translate_as_the_agent():
        with collector_paused():
            return translate(svcs, slices, NODE)

    state = benchmark.pedantic(translate_as_the_agent, rounds=3, iterations=1)
    assert len(state.frontends) >= services


@pytest.mark.parametrize("services", [1000, 10000])
def test_full_sync_into_the_real_maps(benchmark, services):
    svcs, slices = cluster(services, 10)

    def full_sync():
        with real_maps(services, 10) as syncer, collector_paused():  # fresh maps
            start = time.perf_counter()
            syncer.sync(translate(svcs, slices, NODE), NODE.addresses[0])
            return time.perf_counter() - start

    benchmark.extra_info["seconds_without_compile"] = benchmark.pedantic(
        full_sync, rounds=2, iterations=1
    )


def test_one_endpoint_change_reaches_the_maps(benchmark):
    svcs, slices = cluster(10000, 10)
    translator, lineage = Translator(), new_lineage()
    with real_maps(10000, 10) as syncer:
        syncer.sync(translator(svcs, slices, NODE, None, Changes(lineage)), NODE.addresses[0])
        numbers = iter(range(1_000_000))

        def one_change():
            i = next(numbers)
            changes = Changes(lineage, i, i + 1, frozenset({change_one_endpoint(slices, i)}))
            with collector_paused():
                return syncer.sync(translator(svcs, slices, NODE, None, changes), NODE.addresses[0])

        res = benchmark.pedantic(one_change, rounds=10, iterations=1)
        assert 0 < res.writes < 50
