"""PNG plots of the benchmark results (matplotlib, from the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    """matplotlib's pyplot drawing to files (no display on a CI machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dataplane(results: list, path: Path, title: str) -> None:
    """Delivered Mpps per balancer and Service count: median bars, min-max whiskers."""
    plt = _pyplot()

    from bench.dataplane import medians

    med = medians(results)
    cells = sorted({(mix, n) for mix, n, _ in med})
    order = ("xlb", "xlb-redirect", "xlb-dsr", "iptables", "nftables", "bare-xdp")
    modes = [m for m in order if any(k[2] == m for k in med)]
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(cells), 3.6))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs, ys, lo, hi = [], [], [], []
        for i, cell in enumerate(cells):
            if (*cell, mode) in med:
                m, a, b = med[(*cell, mode)]
                xs.append(i + (j - (len(modes) - 1) / 2) * width)
                ys.append(m / 1e6)
                lo.append((m - a) / 1e6)
                hi.append((b - m) / 1e6)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=mode)
    ax.set_xticks(
        range(len(cells)), [f"{n} Service{'s' if n > 1 else ''}\n{mix}" for mix, n in cells]
    )
    ax.set_ylabel("delivered Mpps (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def change_latency(latencies_s: list[float], path: Path, title: str) -> None:
    """The distribution of one-endpoint-change latencies (translate + sync into the maps)."""
    plt = _pyplot()
    xs = sorted(x * 1000 for x in latencies_s)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.step(xs, ys, where="post")
    ax.axvline(20, color="grey", linestyle="--", linewidth=1, label="target p99 20 ms")
    ax.set_xlabel("one endpoint change -> maps (ms)")
    ax.set_ylabel("fraction of changes")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eastwest(results: list, path: Path, title: str) -> None:
    """Requests per second through a ClusterIP, keep-alive and one request per connection."""
    plt = _pyplot()
    tests = [("keepalive", "keep-alive (requests/s)"), ("close", "Connection: close (conns/s)")]
    modes = list(dict.fromkeys(r.mode for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, (test, label) in zip(axes, tests, strict=True):
        values = [
            sum(r.requests_per_s for r in results if r.mode == m and r.test == test)
            / max(1, sum(1 for r in results if r.mode == m and r.test == test))
            for m in modes
        ]
        ax.bar(modes, [v / 1000 for v in values], color=["C0", "C1", "C2"][: len(modes)])
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("thousands per second")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
