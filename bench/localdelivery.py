"""A pod on the balancing node, reached from outside through a NodePort: `--local-delivery
stack` against `redirect`, side by side in one run, with real traffic.

    cli netns  c0 ──veth── up0  node netns  vpod0 ──veth── eth0  pod netns
    wrk / hey (CPU 0)      xlb datapath up                        nginx (CPU 1)

The node is programmed once by the real `xlb datapath up --local-delivery redirect` from a
manifest (a Node, a NodePort Service, its pod); between runs the bench flips the one switch
that flag sets (`xlb_config.local_redirect`), so the two modes alternate every few seconds on
the same programs, maps and sockets (this VM's neighbours move its speed by 2x over minutes;
a recompile between runs would stretch the pairs). By `stack`, xdp_lb DNATs a
client's packet and hands it to the node's stack, which routes it (and runs netfilter) into
the pod's veth; by `redirect`, tc_lb_in hands it to the pod's namespace with
bpf_redirect_peer. The pod's answers take the stack either way (tc_lb on up0's egress turns
them back into the NodePort's). The node's work runs in softirq on the client's CPU, so
what redirect saves shows up as more of CPU 0 for wrk.

Reported per mode: new connections/s (wrk, `Connection: close`), requests/s (keep-alive),
wrk's p50/p99, and the `local_redirected` counter, which proves which path each run took.
`--rates` adds hey at fixed rates (p50/p99/p99.9 at the same offered load).
`xlb bench localdelivery [--seconds 5] [--repeats 3] [--rates 3000]`.

Not measured here: a flood of new flows at packet rates (the kernel refuses the live-frames
generator on this machine); a TCP connection costs the client and nginx far more than the
node's forwarding, so this is what a user's connections gain, not the path's own speed.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import eastwest  # noqa: E402
from bench.dataplane import Namespaces, sh  # noqa: E402
from bench.eastwest import NGINX_CONF, FixedRate  # noqa: E402

MODES = ("stack", "redirect", "routed")  # routed: to the pod's own address, no Service
NODE_IP, CLIENT_IP, POD_IP, POD_GW = "192.168.210.1", "192.168.210.2", "10.244.1.5", "10.244.1.1"
NODE_PORT = 30080
URL = f"http://{NODE_IP}:{NODE_PORT}/"


# routed asks another port of the pod: a client port reused from a NodePort flow would
# otherwise make the same reply tuple as that flow's (pod:80 to the client's port), which a
# tracker (xlb's, or netfilter's for kube-proxy) still holds for a while after the close
ROUTED_PORT = 8080


def url(mode: str) -> str:
    """What the client asks: the NodePort, or (routed) the pod's address through the node,
    which takes the node's stack both ways with no Service at all: the reference."""
    return f"http://{POD_IP}:{ROUTED_PORT}/" if mode == "routed" else URL


MANIFEST = f"""
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
status: {{addresses: [{{type: InternalIP, address: {NODE_IP}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80, nodePort: {NODE_PORT}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec:
  nodeName: node-1
  containers: [{{name: web, ports: [{{containerPort: 80}}]}}]
status: {{podIP: {POD_IP}}}
"""


@dataclass
class Run:
    mode: str  # stack | redirect
    test: str  # close | keepalive
    per_s: float  # connections/s (close) or requests/s (keep-alive)
    p50_ms: float
    p99_ms: float
    errors: int
    redirected: int  # the local_redirected counter's rise during the run


class Node(Namespaces):
    """The client, the node and the pod, nginx running; the node's datapath set per mode."""

    def __init__(self) -> None:
        super().__init__("xlbl", "cli", "node", "pod")
        self.cli, self.node, self.pod = self.names
        self.tmp = tempfile.mkdtemp(prefix="xlb-localdelivery-")
        self.cgroup = ""
        self.nginx: subprocess.Popen | None = None
        self.xdp_pass = None

    def _build(self) -> None:
        from controlplane.datapath.attach import attach_xdp_pass, cgroup2_root, load_xdp_pass
        from controlplane.lab.topology import inside

        self.veth(self.cli, "c0", self.node, "up0")
        sh("ip", "-n", self.cli, "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
        sh("ip", "-n", self.cli, "route", "add", "10.244.0.0/16", "via", NODE_IP)
        sh("ip", "-n", self.node, "addr", "add", f"{NODE_IP}/24", "dev", "up0")
        # frames from outside carry full checksums, as on a wire (xdp_lb sees what a NIC gives)
        sh("ip", "netns", "exec", self.cli, "ethtool", "-K", "c0", "tx", "off")
        self.xdp_pass = load_xdp_pass()  # (kept: its fd lives with this object)
        with inside(self.cli):
            attach_xdp_pass(self.xdp_pass, "c0")
        self.veth(self.pod, "eth0", self.node, "vpod0")
        sh("ip", "-n", self.pod, "addr", "add", f"{POD_IP}/32", "dev", "eth0")
        sh("ip", "-n", self.pod, "route", "add", POD_GW, "dev", "eth0", "scope", "link")
        sh("ip", "-n", self.pod, "route", "add", "default", "via", POD_GW)
        sh("ip", "-n", self.node, "addr", "add", f"{POD_GW}/32", "dev", "vpod0")
        sh("ip", "-n", self.node, "route", "add", f"{POD_IP}/32", "dev", "vpod0")
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        eastwest.short_connections(self.cli, self.pod)
        Path(self.tmp, "cluster.yaml").write_text(MANIFEST)
        listen = f"listen {POD_IP}:80 reuseport backlog=4096;"
        conf = NGINX_CONF.format(dir=self.tmp, addr=POD_IP)
        Path(self.tmp, "nginx.conf").write_text(
            conf.replace(listen, f"{listen} listen {POD_IP}:{ROUTED_PORT} backlog=4096;")
        )
        self.nginx = eastwest.start_nginx(self.pod, Path(self.tmp, "nginx.conf"))
        self.cgroup = os.path.join(cgroup2_root(), f"xlb-benchld-{os.getpid()}")
        os.mkdir(self.cgroup)

    def xlb(self, *args: str) -> str:
        """The real CLI on the node (only the network namespace entered: the pins stay)."""
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.node}", sys.executable, "-m",
             "controlplane.cli", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"xlb {' '.join(args[:2])}: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def up(self) -> None:
        self.xlb("datapath", "up", "-f", f"{self.tmp}/cluster.yaml", "--node", "node-1",
                 "--uplink", "up0", "--cgroup", self.cgroup, "--pin-root", self.pin_root,
                 "--local-delivery", "redirect")  # fmt: skip

    def set_mode(self, mode: str) -> None:
        """What --local-delivery sets in the kernel: xlb_config's local_redirect (the pod
        veths it may use are listed whatever the mode)."""
        import ctypes

        from controlplane.datapath.maps import Maps

        maps = Maps.open(self.pin_root)
        try:
            leaf = maps.config[ctypes.c_uint32(0)]
            leaf.local_redirect = int(mode == "redirect")
            maps.config[ctypes.c_uint32(0)] = leaf
        finally:
            maps.close()
        if self.status()["localDelivery"] != ("redirect" if mode == "redirect" else "stack"):
            raise RuntimeError(f"xlb status does not say local delivery {mode}")
        deadline = time.monotonic() + 5
        while "ok" not in self.curl(mode):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: the NodePort does not answer")
            time.sleep(0.05)

    def down(self) -> None:
        if self.cgroup:
            self.xlb("datapath", "down", "--uplink", "up0", "--cgroup", self.cgroup,
                     "--pin-root", self.pin_root)  # fmt: skip

    def status(self) -> dict:
        return json.loads(self.xlb("status", "--json", "--pin-root", self.pin_root))

    def redirected(self) -> int:
        return self.status()["reasons"].get("local_redirected", 0)

    def curl(self, mode: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.cli, "curl", "-s", "-m", "1", url(mode)],
            capture_output=True,
            text=True,
        ).stdout

    def wrk(self, mode: str, seconds: float, close: bool, connections: int = 16) -> Run:
        before = self.redirected()
        r = eastwest.wrk(self.cli, url(mode), seconds, close, connections)
        return Run(mode, r.test, r.requests_per_s, r.p50_ms, r.p99_ms, r.errors,
                   self.redirected() - before)  # fmt: skip

    def hey(self, mode: str, rate: float, seconds: float, workers: int = 8) -> FixedRate:
        f = eastwest.hey(self.cli, url(mode), rate, seconds, workers)
        f.mode, f.services = mode, 1
        return f

    def __exit__(self, *exc) -> None:
        try:
            self.down()
        except RuntimeError as err:
            print(f"bench localdelivery: {err}", file=sys.stderr)
        eastwest.stop(self.nginx)
        if self.cgroup:
            os.rmdir(self.cgroup)
            self.cgroup = ""
        super().__exit__(*exc)
        subprocess.run(["rm", "-rf", self.tmp])


def measure(
    seconds: float, repeats: int, rates: tuple[float, ...] = (), log=print
) -> tuple[list[Run], list[FixedRate]]:
    """Both modes on one rig, interleaved: stack, redirect, stack, ..."""
    runs: list[Run] = []
    fixed: list[FixedRate] = []
    with Node() as node:
        node.up()
        for rep in range(repeats):
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:  # none always goes first
                node.set_mode(mode)
                node.wrk(mode, 1, close=True)  # warm up: neighbours, caches, nginx's worker
                for close in (True, False):
                    r = node.wrk(mode, seconds, close)
                    runs.append(r)
                    log(f"local delivery {mode:<8} {r.test:<9} run {rep + 1}: "
                        f"{r.per_s:10,.0f}/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms "
                        f"errors {r.errors} redirected {r.redirected:,}")  # fmt: skip
                for rate in rates:
                    f = node.hey(mode, rate, seconds)
                    fixed.append(f)
                    log(f"local delivery {mode:<8} {rate:8,.0f}/s offered run {rep + 1}: "
                        f"{f.achieved_per_s:8,.0f}/s p50 {f.p50_ms:.2f} p99 {f.p99_ms:.2f} "
                        f"p99.9 {f.p999_ms:.2f} ms errors {f.errors}")  # fmt: skip
    return runs, fixed


def ratio(runs: list[Run], test: str = "close") -> float:
    """redirect / stack, medians, for test (close: new connections/s)."""
    med = {
        m: statistics.median([r.per_s for r in runs if r.mode == m and r.test == test] or [0])
        for m in MODES
    }
    return med["redirect"] / med["stack"] if med["stack"] else float("nan")


TESTS = {"close": "new connections (Connection: close)", "keepalive": "keep-alive requests"}


def report(runs: list[Run]) -> str:
    rows = [
        "| test | local delivery | per second, median (min-max) | × stack | p50 ms | p99 ms "
        "| errors | local_redirected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for test in ("close", "keepalive"):
        base = statistics.median([r.per_s for r in runs if r.test == test and r.mode == "stack"]
                                 or [0])  # fmt: skip
        for mode in MODES:
            rs = [r for r in runs if r.test == test and r.mode == mode]
            if not rs:
                continue
            vals = [r.per_s for r in rs]
            med = statistics.median(vals)
            rows.append(
                f"| {TESTS[test]} | {mode} | {med:,.0f} ({min(vals):,.0f}-{max(vals):,.0f}) | "
                + (f"{med / base:.2f}" if base else "-")
                + f" | {statistics.median(r.p50_ms for r in rs):.2f} "
                f"| {statistics.median(r.p99_ms for r in rs):.2f} | {sum(r.errors for r in rs)} "
                f"| {sum(r.redirected for r in rs):,} |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import platform

    from bench.eastwest import report_fixed

    p = argparse.ArgumentParser(prog="xlb bench localdelivery", description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode")
    p.add_argument("--rates", default="", help="also hey at these connections/s (comma-separated)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    # a killed run (a CI timeout) unwinds like Ctrl-C, so the rig is still taken down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rates = tuple(float(x) for x in args.rates.split(",") if x)
    runs, fixed = measure(args.seconds, args.repeats, rates)
    machine = (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}"
    )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "localdelivery.json").write_text(json.dumps(
        {"machine": machine, "time": stamp, "runs": [asdict(r) for r in runs],
         "fixed_rate": [asdict(f) for f in fixed]}, indent=2))  # fmt: skip
    table = report(runs) + (
        f"\nAt a fixed rate (hey; the balancer column is the mode):\n\n{report_fixed(fixed)}"
        if fixed
        else ""
    )
    (out / "localdelivery.md").write_text(
        f"Measured on {machine}, {stamp} ({args.repeats} interleaved runs of "
        f"{args.seconds:.0f} s per mode).\n\n{table}"
    )
    print(table)
    print(f"redirect / stack, new connections/s: {ratio(runs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
