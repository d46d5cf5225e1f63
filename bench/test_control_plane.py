"""Control-plane benchmarks (pytest-benchmark): `make bench`, never part of `make test`.

Targets (issue "Foundation"): build_table m=16381 N=100 ≤ 10 ms; m=65537 N=1000 ≤ 100 ms;
translate of 10,000 Services × 10 endpoints ≤ 1 s.
"""

from __future__ import annotations

import pytest

from controlplane.maglev import build_table
from controlplane.model import translate
from controlplane.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Node,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
)

NODE = Node("node-1", ("192.168.198.201",))


def cluster(services: int, endpoints: int) -> tuple[list[Service], list[EndpointSlice]]:
    svcs, slices = [], []
    for i in range(services):
        name = f"svc-{i}"
        kind = ServiceType.NODE_PORT if i % 4 == 0 else ServiceType.CLUSTER_IP
        svcs.append(
            Service(
                namespace="bench",
                name=name,
                type=kind,
                cluster_ips=(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",),
                ip_families=("IPv4",),
                ports=(
                    ServicePort(
                        "http",
                        Protocol.TCP,
                        80,
                        8080,
                        30000 + i % 2768 if kind is ServiceType.NODE_PORT else None,
                    ),
                ),
                selector={"app": name},
            )
        )
        eps = tuple(
            Endpoint(
                (
                    f"10.{128 + (i * endpoints + k) // 65536}."
                    f"{(i * endpoints + k) // 256 % 256}.{(i * endpoints + k) % 256}",
                ),
                node_name=f"node-{k % 3 + 1}",
            )
            for k in range(endpoints)
        )
        slices.append(
            EndpointSlice("bench", f"{name}-x", name, "IPv4", eps, (EndpointPort("http", 8080),))
        )
    return svcs, slices


@pytest.mark.parametrize("m,n", [(16381, 100), (65537, 1000)])
def test_build_table(benchmark, m, n):
    names = [f"10.1.{i // 256}.{i % 256}:8080" for i in range(n)]
    table = benchmark(build_table, names, m)
    assert len(table) == m and table.min() == 0


@pytest.mark.parametrize("services", [1000, 10000])
def test_translate(benchmark, services):
    svcs, slices = cluster(services, 10)
    state = benchmark.pedantic(translate, (svcs, slices, NODE), rounds=3, iterations=1)
    assert len(state.frontends) >= services
