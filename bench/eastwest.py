"""East-west, pod to pod through a ClusterIP: nginx (Debian's) behind the Service, wrk in the
client pod, the same two pods and node for every balancer, side by side in one run.

    cli netns  eth0 ──veth── c0  node netns  s0 ──veth── eth0  srv netns
    wrk (CPU 0)              forwards; iptables/nftables DNAT  nginx (CPU 1)

* xlb: the socket hooks (sock_lb) on the client's cgroup pick the backend at connect();
  packets go to the pod address, the node only forwards;
* iptables / nftables: kube-proxy's rules in the node's PREROUTING DNAT every new connection
  (pod-to-Service traffic is not masqueraded, as with kube-proxy's --cluster-cidr);

Reported: requests/s with keep-alive, new connections/s with `Connection: close` (one request
per connection), and wrk's latency p50/p99. `xlb bench eastwest [--seconds 5] [--repeats 3]`.

wrk is closed-loop: each balancer is measured at the rate it reaches, so a latency beside a
higher rate says nothing either way. `--rates 2000,8000` adds fixed-rate runs: hey, a new
connection per request, the same offered rate for every balancer, and each request's time
(hey's CSV) for p50/p99/p99.9, with the rate achieved (below the offered one: saturated).
hey's workers each wait for their answer before the next tick, so it is open-loop only
while a request takes less than workers/rate (2.7 ms at 8 workers and 3,000/s); its workers'
ticks start together, so more workers send bigger bursts (64 made p50 6 ms of queueing in
hey itself). On one CPU hey makes about 6,500 connections a second: a rate above that
measures hey, and the achieved column says so.
"""

from __future__ import annotations

import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.dataplane import Namespaces, other_vip, sh  # noqa: E402
from bench.kube_proxy_rules import iptables_rules, nft_rules  # noqa: E402
from controlplane.lab.processes import join_cgroup  # noqa: E402

CLUSTER_IP, POD_CLI, POD_SRV = "10.96.100.1", "10.244.1.2", "10.244.2.2"
MODES = ("xlb", "iptables", "nftables")
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
    uwsgi_temp_path {dir}; scgi_temp_path {dir};
    server {{
        listen {addr}:80 reuseport backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass
class Result:
    mode: str
    test: str  # keepalive | close
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    services: int = 1


@dataclass
class FixedRate:
    mode: str
    services: int
    offered_per_s: float
    achieved_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    completed: int
    errors: int


def _percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0-1) by the nearest rank, of values sorted ascending."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def parse_hey_csv(text: str) -> tuple[list[float], int]:
    """hey -o csv: every answered request's time (ms, sorted) and how many answers were not
    200. A connection that failed is not in the CSV: it shows as the achieved rate falling
    short of the offered one."""
    times, errors = [], 0
    for line in text.splitlines()[1:]:
        cells = line.split(",")
        if len(cells) < 7:
            continue
        try:
            seconds, status = float(cells[0]), int(cells[6])
        except ValueError:
            continue
        times.append(seconds * 1000)
        errors += status != 200
    return sorted(times), errors


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def short_connections(*namespaces: str) -> None:
    """Room in each namespace for a few hundred thousand short connections."""
    for ns in namespaces:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")


def start_nginx(ns: str, conf: Path) -> subprocess.Popen:
    """Debian's nginx in ns on CPU 1, with conf (NGINX_CONF filled in)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "taskset", "-c", "1", "nginx", "-c", str(conf), "-g",
         "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(ns: str, url: str, seconds: float, close: bool, connections: int = 16,
        preexec_fn=None) -> Result:  # fmt: skip
    """wrk from ns on CPU 0 (one thread): its rate, latencies and errors (mode left blank)."""
    cmd = ["ip", "netns", "exec", ns, "taskset", "-c", "0", "wrk", "-t1"]
    cmd += [f"-c{connections}", f"-d{seconds:.0f}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, preexec_fn=preexec_fn, timeout=seconds + 30
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    return Result(
        "",
        "close" if close else "keepalive",
        float(rps.group(1)) if rps else 0.0,
        _latency_ms(out, "50"),
        _latency_ms(out, "99"),
        errors,
    )


def hey(ns: str, url: str, rate: float, seconds: float, workers: int = 8,
        preexec_fn=None) -> FixedRate:  # fmt: skip
    """rate new connections a second (one request each) from ns for seconds, on CPU 0 (mode
    and Service count left blank)."""
    cmd = ["ip", "netns", "exec", ns, "taskset", "-c", "0", "hey", "-cpus", "1"]
    cmd += ["-z", f"{seconds:.0f}s", "-c", str(workers), "-q", f"{rate / workers:.3f}"]
    cmd += ["-disable-keepalive", "-t", "5", "-o", "csv", url]
    out = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=preexec_fn, timeout=seconds + 60
    ).stdout
    times, errors = parse_hey_csv(out)
    return FixedRate(
        "", 0, rate, len(times) / seconds,
        _percentile(times, 0.50), _percentile(times, 0.99), _percentile(times, 0.999),
        len(times), errors,
    )  # fmt: skip


class Pods(Namespaces):
    """Two pods and their node; nginx in one; the balancer under test set up per mode."""

    def __init__(self) -> None:
        super().__init__("xlbe", "cli", "node", "srv")
        self.cli, self.node, self.srv = self.names
        self.cgroup = ""
        self.tmp = tempfile.mkdtemp(prefix="xlb-eastwest-")
        self.nginx: subprocess.Popen | None = None

    def _build(self) -> None:
        for pod, port, addr, gw in (
            (self.cli, "c0", POD_CLI, "10.244.1.1"),
            (self.srv, "s0", POD_SRV, "10.244.2.1"),
        ):
            self.veth(pod, "eth0", self.node, port)
            sh("ip", "-n", pod, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", self.node, "addr", "add", f"{gw}/24", "dev", port)
            sh("ip", "-n", pod, "route", "add", "default", "via", gw)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        short_connections(self.cli, self.srv)
        conf = Path(self.tmp, "nginx.conf")
        conf.write_text(NGINX_CONF.format(dir=self.tmp, addr=POD_SRV))
        self.nginx = start_nginx(self.srv, conf)
        deadline = time.monotonic() + 5
        while "ok" not in self.curl(POD_SRV):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {Path(self.tmp, 'error.log')}")
            time.sleep(0.05)

    def curl(self, address: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", self.cli, "curl", "-s", "-m", "1", f"http://{address}/"],
            capture_output=True,
            text=True,
            preexec_fn=functools.partial(join_cgroup, self.cgroup),
        )
        return out.stdout

    def __exit__(self, *exc) -> None:
        stop(self.nginx)
        if self.cgroup:
            from controlplane.datapath.attach import detach_sock

            detach_sock(self.cgroup, self.pin_root)
            os.rmdir(self.cgroup)
            self.cgroup = ""
        super().__exit__(*exc)
        subprocess.run(["rm", "-rf", self.tmp])

    def setup(self, mode: str, services: int = 1) -> None:
        """The balancer, with services-1 other Services programmed in front of the one
        measured (kube-proxy's iptables mode walks them for every new connection)."""
        vips = [*(other_vip(i) for i in range(services - 1)), CLUSTER_IP]
        if mode == "xlb":
            self._xlb(vips)
        elif mode == "iptables":
            text = iptables_rules(vips, "tcp", 80, POD_SRV, 80, masquerade=False, postrouting=False)
            sh("ip", "netns", "exec", self.node, "iptables-restore", input=text)
        else:
            text = nft_rules(vips, "tcp", 80, POD_SRV, 80, masquerade=False, postrouting=False)
            sh("ip", "netns", "exec", self.node, "nft", "-f", "-", input=text)
        if "ok" not in self.curl(CLUSTER_IP):
            raise RuntimeError(f"{mode}: the ClusterIP does not answer")

    def _xlb(self, vips: list[str]) -> None:
        import bcc

        from controlplane.datapath.attach import attach_sock, cgroup2_root
        from controlplane.datapath.config import DatapathConfig
        from controlplane.datapath.maps import Maps
        from controlplane.datapath.programs import compile_program
        from controlplane.datapath.sync import Syncer
        from controlplane.model.objects import Protocol
        from controlplane.model.state import (
            Backend,
            DesiredState,
            Frontend,
            FrontendKind,
            Scope,
        )

        n = max(1024, 2 * len(vips))
        cfg = DatapathConfig(pin_root=self.pin_root, max_services=n, max_backends=1024)
        xdp = compile_program("xdp_lb.c", cfg)  # creates the pinned maps
        xdp.function("xdp_lb", bcc.BPF.XDP)
        sock = compile_program("sock_lb.c", cfg)
        self.programs += [sock, xdp]
        services = tuple(
            Frontend(
                f"bench/s{i}",
                "",
                FrontendKind.CLUSTER_IP,
                Scope.INTERNAL,
                vip,
                80,
                Protocol.TCP,
                (Backend(POD_SRV, 80),),
            )
            for i, vip in enumerate(vips)
        )
        Syncer(Maps.open(xdp.pin_root), cfg).sync(DesiredState(frontends=services))
        self.cgroup = os.path.join(cgroup2_root(), f"xlb-benchew-{os.getpid()}")
        os.mkdir(self.cgroup)
        attach_sock(sock, self.cgroup)

    def wrk(self, seconds: float, close: bool, connections: int = 16) -> Result:
        join = functools.partial(join_cgroup, self.cgroup)
        return wrk(self.cli, f"http://{CLUSTER_IP}/", seconds, close, connections, join)

    def hey(self, rate: float, seconds: float, workers: int = 8) -> FixedRate:
        """rate new connections a second (one request each) for seconds, from CPU 0."""
        join = functools.partial(join_cgroup, self.cgroup)
        return hey(self.cli, f"http://{CLUSTER_IP}/", rate, seconds, workers, join)


def measure(
    mode: str, seconds: float, services: int = 1, rates: tuple[float, ...] = ()
) -> tuple[list[Result], list[FixedRate]]:
    """One rig for the balancer: wrk's closed-loop runs, then hey at each fixed rate."""
    with Pods() as pods:
        pods.setup(mode, services)
        pods.wrk(1, close=True)  # warm up: neighbours, caches, nginx's worker
        closed, fixed = [], []
        for close in (False, True):
            r = pods.wrk(seconds, close)
            r.mode, r.services = mode, services
            closed.append(r)
        for rate in rates:
            f = pods.hey(rate, seconds)
            f.mode, f.services = mode, services
            fixed.append(f)
        return closed, fixed


def report_fixed(results: list[FixedRate]) -> str:
    """Each balancer at the same offered rates: medians of the runs."""
    runs: dict[tuple[int, float, str], list[FixedRate]] = {}
    for r in results:
        runs.setdefault((r.services, r.offered_per_s, r.mode), []).append(r)
    rows = [
        "| Services | offered conn/s | balancer | achieved conn/s | p50 ms | p99 ms | p99.9 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (n, rate, mode), rs in sorted(runs.items(), key=lambda kv: kv[0]):

        def med(field: str, rs: list[FixedRate] = rs) -> float:
            return statistics.median(getattr(x, field) for x in rs)

        rows.append(
            f"| {n:,} | {rate:,.0f} | {mode} | {med('achieved_per_s'):,.0f} | "
            f"{med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('p999_ms'):.2f} | "
            f"{sum(x.errors for x in rs)} |"
        )
    return "\n".join(rows) + "\n"


def report(results: list[Result]) -> str:
    runs: dict[tuple[int, str, str], list[Result]] = {}
    for r in results:
        runs.setdefault((r.services, r.test, r.mode), []).append(r)
    rows = [
        "| Services | test | balancer | requests/s, median (min-max) | × iptables | p50 ms "
        "| p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    med = {k: statistics.median(x.requests_per_s for x in v) for k, v in runs.items()}
    for (n, test, mode), rs in runs.items():
        ipt = med.get((n, test, "iptables"), 0)
        rps = [x.requests_per_s for x in rs]
        rows.append(
            f"| {n} | {'keep-alive' if test == 'keepalive' else 'Connection: close'} | {mode} | "
            f"{med[(n, test, mode)]:,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
            + (f"{med[(n, test, mode)] / ipt:.2f}" if ipt else "-")
            + f" | {statistics.median(x.p50_ms for x in rs):.2f} "
            f"| {statistics.median(x.p99_ms for x in rs):.2f} | {sum(x.errors for x in rs)} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import platform

    p = argparse.ArgumentParser(prog="xlb bench eastwest", description=__doc__)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per balancer")
    p.add_argument("--services", default="1,10000", help="Service counts, comma-separated")
    p.add_argument(
        "--rates",
        default="",
        help="also fixed-rate runs at these new connections a second, comma-separated "
        "(the same for every balancer; hey)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    results: list[Result] = []
    fixed: list[FixedRate] = []
    rates = tuple(float(x) for x in args.rates.split(",") if x)
    for n, rep, mode in (
        (n, rep, mode)
        for n in (int(x) for x in args.services.split(","))
        for rep in range(args.repeats)
        for mode in args.modes.split(",")
    ):
        closed, at_rate = measure(mode, args.seconds, n, rates)
        for r in closed:
            print(
                f"{mode:<9} {n:>6} Services {r.test:<9} run {rep + 1}: "
                f"{r.requests_per_s:10,.0f} req/s "
                f"p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms errors {r.errors}"
            )
        for f in at_rate:
            print(
                f"{mode:<9} {n:>6} Services {f.offered_per_s:8,.0f}/s offered run {rep + 1}: "
                f"{f.achieved_per_s:8,.0f}/s p50 {f.p50_ms:.2f} p99 {f.p99_ms:.2f} "
                f"p99.9 {f.p999_ms:.2f} ms errors {f.errors}"
            )
        results += closed
        fixed += at_rate
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, " + (
        f"kernel {platform.release()}"
    )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    (out / "eastwest.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "time": stamp,
                "results": [asdict(r) for r in results],
                "fixed_rate": [asdict(r) for r in fixed],
            },
            indent=2,
        )
    )
    table = report(results) + (
        f"\nAt a fixed rate (hey):\n\n{report_fixed(fixed)}" if fixed else ""
    )
    (out / "eastwest.md").write_text(f"Measured on {machine}, {stamp}.\n\n{table}")
    try:
        from bench import plots

        for n in sorted({r.services for r in results}):
            plots.eastwest(
                [r for r in results if r.services == n],
                out / f"eastwest-{n}.png",
                f"pod to ClusterIP, {n:,} Services, {machine}",
            )
    except ImportError as exc:  # the table stands without the pictures
        print(f"no plots ({exc}): install the bench extra (pip install -e '.[bench]')")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
