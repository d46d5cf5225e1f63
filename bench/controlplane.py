"""Control-plane costs at cluster sizes, into the real maps: a full sync of N Services x E
endpoints (translate + write), the latency of one endpoint change reaching the maps, and the
agent's memory with that state loaded. Used by `make bench` (pytest-benchmark) and bench-ci.

    python -m bench.controlplane [--services 10000] [--endpoints 10] [--changes 20]
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controlplane.heap import collector_paused, release_memory  # noqa: E402
from controlplane.model import Translator  # noqa: E402
from controlplane.model.objects import (  # noqa: E402
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Node,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
)
from controlplane.model.snapshot import Changes, new_lineage  # noqa: E402

NODE = Node("node-1", ("192.168.198.201",))


def cluster(services: int, endpoints: int) -> tuple[list[Service], list[EndpointSlice]]:
    """N Services (one in four a NodePort), each with E endpoints spread over three nodes."""
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
                        30000 + i // 4 % 2768 if kind is ServiceType.NODE_PORT else None,
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


def datapath_config(services: int, endpoints: int):
    from controlplane.datapath.config import DatapathConfig

    return DatapathConfig(
        pin_root=f"/sys/fs/bpf/xlb-bench-cp-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        max_services=max(1024, 2 * services),
        max_backends=max(1024, 2 * services * endpoints),
        max_slots=max(8192, 2 * services * endpoints),
        ct_size=4096,
        affinity_size=1024,
    )


@contextmanager
def real_maps(services: int, endpoints: int):
    """The maps as an agent has them at this size: the three programs compiled and loaded by
    the loader's child process (not attached), the maps opened from their pins under a
    unique root (removed after). This process never imports bcc, like the agent."""
    from controlplane.datapath import loader
    from controlplane.datapath.maps import Maps
    from controlplane.datapath.sync import Syncer

    cfg = datapath_config(services, endpoints)
    try:
        loader.load(cfg)
        maps = Maps.open(cfg.pin_root)
        yield Syncer(maps, cfg)
        maps.close()
    finally:
        subprocess.run(["rm", "-rf", cfg.pin_root])


def change_one_endpoint(slices: list[EndpointSlice], i: int) -> str:
    """Service i*7's first endpoint moves to a new address (a pod replaced); that Service's
    namespace/name, as the Kubernetes source's change tracker would name it."""
    at = (i * 7) % len(slices)
    sl = slices[at]
    eps = list(sl.endpoints)
    eps[0] = dataclasses.replace(eps[0], addresses=(f"10.250.{i // 250}.{i % 250 + 1}",))
    slices[at] = dataclasses.replace(sl, endpoints=tuple(eps))
    return sl.service_key


def measure(services: int = 10000, endpoints: int = 10, changes: int = 20) -> dict:
    """Full sync (translate + write) and per-change latencies, in seconds."""
    svcs, slices = cluster(services, endpoints)
    translator = Translator()  # as the agent: a change re-translates only its Service
    lineage = new_lineage()  # the snapshots of one source, numbered as the Kubernetes one does
    with real_maps(services, endpoints) as syncer:
        with collector_paused():  # as the agent
            t0 = time.perf_counter()
            state = translator(svcs, slices, NODE, None, Changes(lineage, -1, 0))
            t1 = time.perf_counter()
            res = syncer.sync(state, NODE.addresses[0])
            t2 = time.perf_counter()
            # the Maglev tables past the first sync's budget: the agent's next syncs (each
            # after min_interval; here back to back, so this is their work, not the wait)
            tables, table_bytes, rounds, more = res.tables, res.table_bytes, 1, res
            while more.tables_due:
                more = syncer.sync(state, NODE.addresses[0])
                tables, table_bytes, rounds = (
                    tables + more.tables,
                    table_bytes + more.table_bytes,
                    rounds + 1,
                )
            t3 = time.perf_counter()
        gc.freeze()  # as the agent does after every sync (and after a big one:)
        release_memory()
        latencies = []
        for i in range(changes):
            changes = Changes(lineage, i, i + 1, frozenset({change_one_endpoint(slices, i)}))
            start = time.perf_counter()
            with collector_paused():
                syncer.sync(translator(svcs, slices, NODE, None, changes), NODE.addresses[0])
            latencies.append(time.perf_counter() - start)
            gc.freeze()
    latencies.sort()
    return {
        "services": services,
        "endpoints": endpoints,
        "full_sync_translate_s": t1 - t0,
        "full_sync_write_s": t2 - t1,
        "full_sync_s": t2 - t0,
        "full_sync_writes": res.writes,
        "maglev_tables": tables,
        "maglev_table_mib": table_bytes / 2**20,
        "maglev_all_tables_s": t3 - t0,  # translate, the first sync and the ones after it
        "maglev_syncs": rounds,
        "change_s": latencies,
        "change_p50_s": statistics.median(latencies),
        "change_p99_s": latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))],
    }


def agent_memory(services: int = 10000, endpoints: int = 10) -> dict:
    """RSS of a fresh process holding what an agent holds at this size: the Kubernetes client
    imported, the parsed cluster, its translation, the maps of the loaded datapath and the
    Syncer's mirror of them (the compile runs in the loader's child, as in the agent)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.controlplane", "--memory-child"]
        + ["--services", str(services), "--endpoints", str(endpoints)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    rss, peak = (int(x) for x in out.stdout.split()[-2:])
    return {"services": services, "rss_mib": rss / 1024, "peak_rss_mib": peak / 1024}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.controlplane", description=__doc__)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:  # agent_memory's fresh process: load, sync, report VmRSS and VmHWM
        import kubernetes  # noqa: F401  (the agent's API source holds it)

        svcs, slices = cluster(args.services, args.endpoints)
        with real_maps(args.services, args.endpoints) as syncer:
            state = Translator()(svcs, slices, NODE)
            while syncer.sync(state, NODE.addresses[0]).tables_due:  # every Maglev table in
                pass
            gc.freeze()
            release_memory()  # as the agent does after a big sync
            text = Path("/proc/self/status").read_text()
            status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            print(int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]))
        return 0
    result = measure(args.services, args.endpoints, args.changes)
    result |= agent_memory(args.services, args.endpoints)
    print(json.dumps({k: v for k, v in result.items() if k != "change_s"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
