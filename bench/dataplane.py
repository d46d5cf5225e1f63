"""North-south packet rate, side by side: xlb's XDP program, kube-proxy-style iptables and
nftables, and a bare XDP redirect (the ceiling), with the same generator and sink in one run.

    gen netns  g0 ──veth── l0  balancer netns  l1 ──veth── s0  sink netns
    live-frames XDP_TX       balancer under test        XDP_DROP counter

The generator is BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on CPU 0 (about 6-7 Mpps
where the kernel allows it). A kernel that refuses it (EPERM) gets bench/gen/afpacket.c
instead: the same frames from user space on a packet socket (sendmmsg, qdisc bypassed),
about 0.7 Mpps on these VMs, which then caps every balancer: a ratio between two balancers
that both reach it says "at least". Each result names its generator. The balancer's
receive path runs as a threaded NAPI pinned to CPU 1; what the sink counts per second is
the delivered rate. UDP to one frontend whose backend sits behind the
sink, with N-1 other Services programmed in front of it (kube-proxy's iptables mode walks
them in order). kube-proxy's modes get the rules kube-proxy writes: the nat chains and its
filter table (FORWARD, KUBE-FORWARD and the firewall chains, which every forwarded packet
walks). Mixes:

* established: 16 long-lived flows to a NodePort (externalTrafficPolicy Cluster): the
  backend is on another node, so every balancer SNATs to the node's address. The backend
  answers each flow once before the measurement, so that conntrack holds them as
  established, as it does flows with replies (the sink itself answers nothing).
* new-flow: a new flow every packet (16 million before one repeats: source port and
  address move), to a Service with externalTrafficPolicy Local whose backend is on this node
  (behind l1, as a pod's veth): no SNAT, so no balancer runs out of source ports, and what is
  measured is the cost of a new connection (the rule walk, the conntrack entry). xlb
  translates in XDP and passes the packet to the stack, which forwards it, as for a local pod;
  xlb-redirect is the same with `--local-delivery redirect` (tc_lb_in hands the packet into
  the pod's namespace, past the stack).
  (xlb-dsr: the same 16 flows by direct server return.)
* remote-new-flow: a new flow every packet to a NodePort whose backend is on another node
  (externalTrafficPolicy Cluster): kube-proxy's modes and xlb by SNAT take a source port
  each, xlb-dsr carries the frontend to the backend's node instead (direct server return)
  and keeps the client's address.
"""

from __future__ import annotations

import ctypes as ct
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.kube_proxy_rules import iptables_rules, nft_rules  # noqa: E402
from controlplane.datapath.attach import _attach_tc_filter as attach_tc_filter  # noqa: E402
from controlplane.datapath.config import DatapathConfig  # noqa: E402
from controlplane.datapath.maps import Maps  # noqa: E402
from controlplane.datapath.programs import compile_program  # noqa: E402
from controlplane.datapath.sync import Syncer  # noqa: E402
from controlplane.datapath.syscall import BPF_F_TEST_XDP_LIVE_FRAMES, prog_test_run  # noqa: E402
from controlplane.lab.topology import inside  # noqa: E402
from controlplane.model.objects import Protocol  # noqa: E402
from controlplane.model.state import (  # noqa: E402
    Algorithm,
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    Scope,
)

BENCH_BPF = Path(__file__).resolve().parent / "bpf"
VIP, VPORT = "10.200.0.1", 80
BACKEND, BPORT = "10.201.0.2", 8080
GEN_IP, LB_IP, LB_OUT_IP, SINK_IP = "192.168.50.2", "192.168.50.1", "192.168.51.1", "192.168.51.2"
MODES = ("xlb", "iptables", "nftables", "bare-xdp")
# the modes that measure one mix only: local delivery's, and direct server return's
MIX_MODES = {"xlb-redirect": {"new-flow"}, "xlb-dsr": {"established", "remote-new-flow"}}
LIVE, AF_PACKET = "live-frames", "af-packet"
GEN_SOURCE = Path(__file__).resolve().parent / "gen" / "afpacket.c"
_refused: list[str] = []  # why the kernel refused the live-frames generator, once seen


@dataclass
class Result:
    mode: str
    services: int
    mix: str
    generated_pps: float
    delivered_pps: float
    generator: str = LIVE


def afpacket_binary() -> str:
    """bench/gen/afpacket.c, compiled once per source (gcc: `make setup` installs it)."""
    import hashlib
    import tempfile

    text = GEN_SOURCE.read_bytes()
    path = Path(tempfile.gettempdir(), f"xlb-afpacket-{hashlib.sha256(text).hexdigest()[:12]}")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        out = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(GEN_SOURCE)],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"cannot build the af-packet generator: {out.stderr.strip()}")
        tmp.replace(path)
    return str(path)


def sh(*args: str, check: bool = True, input: str | None = None) -> str:
    out = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])}...: {out.stderr.strip()}")
    return out.stdout


def other_vip(i: int) -> str:
    return f"10.{202 + i // 65536}.{i // 256 % 256}.{i % 256}"


def vips(services: int) -> list[str]:
    """The Services' addresses in the order kube-proxy's rules list them: the measured one
    (VIP) last, so that iptables walks every other first."""
    return [*(other_vip(i) for i in range(services - 1)), VIP]


class Namespaces:
    """A bench rig's network namespaces (unique names), veth pairs between them, a pin root;
    built on entry and removed on exit, also when building fails half-way."""

    def __init__(self, prefix: str, *roles: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = [f"{prefix}-{tag}-{r}" for r in roles]
        self.pin_root = f"/sys/fs/bpf/{prefix}-{os.getpid()}-{tag}"
        self.programs: list = []

    def __enter__(self):
        try:
            for ns in self.names:
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        raise NotImplementedError

    def veth(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        """A veth pair, made under unique names in the root namespace, moved, renamed, up."""
        tmp_a, tmp_b = f"xb{uuid.uuid4().hex[:8]}", f"xb{uuid.uuid4().hex[:8]}"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        sh("ip", "link", "set", tmp_a, "netns", ns_a, "name", a)
        sh("ip", "link", "set", tmp_b, "netns", ns_b, "name", b)
        sh("ip", "-n", ns_a, "link", "set", a, "up")
        sh("ip", "-n", ns_b, "link", "set", b, "up")

    def __exit__(self, *exc) -> None:
        for p in self.programs:
            p.cleanup()
        self.programs = []
        for ns in self.names:
            sh("ip", "netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", self.pin_root])


class Rig(Namespaces):
    def __init__(self) -> None:
        super().__init__("xlbb", "gen", "lb", "sink")
        self.gen, self.lb, self.sink = self.names

    def _build(self) -> None:
        import bcc

        self.veth(self.gen, "g0", self.lb, "l0")
        self.veth(self.lb, "l1", self.sink, "s0")
        sh("ip", "-n", self.gen, "addr", "add", f"{GEN_IP}/24", "dev", "g0")
        sh("ip", "-n", self.lb, "addr", "add", f"{LB_IP}/24", "dev", "l0")
        sh("ip", "-n", self.lb, "addr", "add", f"{LB_OUT_IP}/24", "dev", "l1")
        sh("ip", "-n", self.sink, "addr", "add", f"{SINK_IP}/24", "dev", "s0")
        sh("ip", "netns", "exec", self.lb, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # the sink drops ARP too: its neighbour entry must be static
        sh(
            "ip",
            "-n",
            self.lb,
            "neigh",
            "replace",
            SINK_IP,
            "lladdr",
            self.mac(self.sink, "s0"),
            "dev",
            "l1",
            "nud",
            "permanent",
        )
        sh("ip", "-n", self.lb, "route", "add", f"{BACKEND}/32", "via", SINK_IP)
        sh(
            "ip",
            "-n",
            self.gen,
            "neigh",
            "replace",
            LB_IP,
            "lladdr",
            self.mac(self.lb, "l0"),
            "dev",
            "g0",
            "nud",
            "permanent",
        )
        sink = bcc.BPF(src_file=str(BENCH_BPF / "sink.c").encode())
        self.sink_fn = sink.load_func(b"sink", bcc.BPF.XDP)
        self.sink_count = sink[b"sink_count"]
        with inside(self.sink):
            bcc.BPF.attach_xdp(b"s0", self.sink_fn, 1 << 2)
            # what bpf_redirect_peer hands over skips the veth's XDP: counted at tc
            attach_tc_filter(sink.load_func(b"sink_tc", bcc.BPF.SCHED_CLS), "s0", "ffff:fff2")
        gen = bcc.BPF(src_file=str(BENCH_BPF / "gen.c").encode())
        self.gen_fn = gen.load_func(b"gen", bcc.BPF.XDP)
        self.gen_tmpl = gen[b"gen_tmpl"]
        self.programs += [sink, gen]
        with inside(self.gen):
            import socket

            self.g0 = socket.if_nametoindex("g0")

    @staticmethod
    def mac(ns: str, dev: str) -> str:
        return sh("ip", "-n", ns, "-br", "link", "show", dev).split()[2]

    def _pin_napi(self) -> None:
        """The balancer's receive path in its own kernel thread on CPU 1; the generator keeps
        CPU 0, so that one does not slow the other. (A veth has NAPI once XDP is attached.)"""
        sh("ip", "netns", "exec", self.lb, "sh", "-c", "echo 1 > /sys/class/net/l0/threaded")
        time.sleep(0.2)
        for line in sh("ps", "-eo", "pid,comm").splitlines():
            pid, _, comm = line.strip().partition(" ")
            if comm.strip().startswith("napi/l0-"):
                sh("taskset", "-pc", "1", pid, check=False)

    # -- the balancers ---------------------------------------------------------------------

    def attach_lb_xdp(self, fn) -> None:
        import bcc

        with inside(self.lb):
            bcc.BPF.attach_xdp(b"l0", fn, 1 << 2)
        self._pin_napi()

    def setup(self, mode: str, services: int, local_backend: bool = False) -> None:
        """The balancer under test; local_backend: externalTrafficPolicy Local with the
        backend on this node (no SNAT), else Cluster with it on another node (SNAT)."""
        import bcc

        if mode.startswith("xlb"):
            cfg = DatapathConfig(
                pin_root=self.pin_root,
                max_services=max(1024, 2 * services),
                max_backends=1024,
                ct_size=1 << 20,
                local_delivery="redirect" if mode == "xlb-redirect" else "stack",
            )
            prog = compile_program("xdp_lb.c", cfg)
            fn = prog.function("xdp_lb", bcc.BPF.XDP)
            dsr = mode == "xlb-dsr"
            be = (Backend(BACKEND, BPORT, "sink", local_backend, dsr=dsr),)
            fes = [
                Frontend(
                    "bench/target",
                    "",
                    FrontendKind.NODE_PORT,
                    Scope.EXTERNAL,
                    VIP,
                    VPORT,
                    Protocol.UDP,
                    be,
                    algorithm=Algorithm.MAGLEV,
                    preserve_client_ip=local_backend,
                    dsr=dsr,
                )
            ]
            fes += [
                Frontend(
                    f"bench/s{i}",
                    "",
                    FrontendKind.NODE_PORT,
                    Scope.EXTERNAL,
                    other_vip(i),
                    VPORT,
                    Protocol.UDP,
                    be,
                    algorithm=Algorithm.RANDOM,
                )
                for i in range(services - 1)
            ]
            syncer = Syncer(Maps.open(prog.pin_root), cfg)
            syncer.sync(DesiredState(frontends=tuple(fes)), LB_IP)
            self.programs.append(prog)
            self.attach_lb_xdp(fn)
            if mode == "xlb-redirect":  # tc_lb_in, and l1 as the pod's veth it may use
                tc = compile_program("tc_lb.c", cfg)
                self.programs.append(tc)
                with inside(self.lb):
                    import socket

                    attach_tc_filter(tc.function("tc_lb_in", bcc.BPF.SCHED_CLS), "l0",
                                     "ffff:fff2")  # fmt: skip
                    syncer.sync_peer_devs({socket.if_nametoindex("l1")})
        elif mode == "bare-xdp":
            with inside(self.lb):
                import socket

                out = socket.if_nametoindex("l1")
            bpf = bcc.BPF(
                src_file=str(BENCH_BPF / "bare.c").encode(), cflags=[f"-DBARE_OUT_IFINDEX={out}"]
            )
            fn = bpf.load_func(b"bare", bcc.BPF.XDP)
            c = bpf[b"bare_cfg"].Leaf()
            c.dmac[:] = bytes.fromhex(self.mac(self.sink, "s0").replace(":", ""))
            c.smac[:] = bytes.fromhex(self.mac(self.lb, "l1").replace(":", ""))
            c.daddr = int.from_bytes(bytes(map(int, BACKEND.split("."))), "little")
            c.saddr = int.from_bytes(bytes(map(int, LB_OUT_IP.split("."))), "little")
            c.dport = socket.htons(BPORT)
            bpf[b"bare_cfg"][ct.c_int(0)] = c
            self.programs.append(bpf)
            self.attach_lb_xdp(fn)
        else:
            # the kernel path: a veth delivers XDP_TX frames only to an end running XDP
            bpf = bcc.BPF(src_file=str(REPO / "bpf" / "xdp_pass.c").encode())
            self.programs.append(bpf)
            self.attach_lb_xdp(bpf.load_func(b"xdp_pass", bcc.BPF.XDP))
            if mode == "iptables":
                sh(
                    "ip",
                    "netns",
                    "exec",
                    self.lb,
                    "iptables-restore",
                    input=iptables_rules(
                        vips(services), "udp", VPORT, BACKEND, BPORT, not local_backend
                    ),
                )
            else:
                sh(
                    "ip",
                    "netns",
                    "exec",
                    self.lb,
                    "nft",
                    "-f",
                    "-",
                    input=nft_rules(
                        vips(services), "udp", VPORT, BACKEND, BPORT, not local_backend
                    ),
                )

    # -- the measurement ------------------------------------------------------------------

    def frame(self, flows: int) -> None:
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether

        pkt = (
            Ether(src=self.mac(self.gen, "g0"), dst=self.mac(self.lb, "l0"))
            / IP(src=GEN_IP, dst=VIP, ttl=64)
            / UDP(sport=1024, dport=VPORT, chksum=0)
            / (b"x" * 18)
        )
        raw = bytes(pkt)[:64].ljust(64, b"\0")
        t = self.gen_tmpl.Leaf()
        t.frame[:] = raw
        t.flows = flows
        t.sport_off = 14 + 20
        self.gen_tmpl[ct.c_int(0)] = t
        self.raw, self.flows = raw, flows

    def answer_flows(self) -> int:
        """One reply on every UDP flow the balancer's conntrack holds, sent by the backend
        (the sink) to the tuple conntrack expects. The sink answers nothing, and a UDP flow
        without a reply stays NEW to conntrack: kube-proxy's filter rules would then walk
        the established mix as new connections, which no real flow with replies does. Only
        the kernel's balancers keep such state; returns the flows answered."""
        import socket

        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether

        table = sh("ip", "netns", "exec", self.lb, "cat", "/proc/net/nf_conntrack")
        src, dst = self.mac(self.sink, "s0"), self.mac(self.lb, "l1")
        replies = []
        for line in table.splitlines():
            fields = line.split()
            if "udp" not in fields or "[UNREPLIED]" not in fields:
                continue
            reply = dict(
                f.split("=", 1) for f in fields[fields.index("[UNREPLIED]") + 1 :] if "=" in f
            )
            if reply.get("src") != BACKEND:
                continue
            frame = (
                Ether(src=src, dst=dst)
                / IP(src=reply["src"], dst=reply["dst"])
                / UDP(sport=int(reply["sport"]), dport=int(reply["dport"]))
            )
            replies.append(bytes(frame))
        with inside(self.sink), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind(("s0", 0))
            for frame in replies:
                raw.send(frame)
        time.sleep(0.05)
        return len(replies)

    def delivered(self) -> int:
        return sum(self.sink_count[ct.c_int(0)])

    def run(self, seconds: float) -> tuple[float, float, str]:
        """(generated pps, delivered pps, the generator) over seconds."""
        if not _refused:
            try:
                return (*self._run_live(seconds), LIVE)
            except PermissionError as exc:  # some kernels: EPERM, whatever the program
                _refused.append(str(exc))
                print(
                    f"bench: the kernel refused the live-frames generator ({exc}); the "
                    "af-packet generator measures instead (slower: it caps the rates)"
                )
        return (*self._run_afpacket(seconds), AF_PACKET)

    def _run_live(self, seconds: float) -> tuple[float, float]:
        os.sched_setaffinity(0, {0})
        before, sent, start = self.delivered(), 0, time.perf_counter()
        with inside(self.gen):
            while time.perf_counter() - start < seconds:
                prog_test_run(
                    self.gen_fn.fd,
                    self.raw,
                    repeat=1_000_000,
                    ifindex=self.g0,
                    flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size=64,
                )
                sent += 1_000_000
        elapsed = time.perf_counter() - start
        time.sleep(0.05)
        return sent / elapsed, (self.delivered() - before) / elapsed

    def _run_afpacket(self, seconds: float) -> tuple[float, float]:
        before, start = self.delivered(), time.perf_counter()
        out = subprocess.run(
            ["ip", "netns", "exec", self.gen, "taskset", "-c", "0", afpacket_binary(), "g0",
             f"{seconds}", str(self.flows), str(14 + 20), self.raw.hex()],
            capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"af-packet generator: {out.stderr.strip()}")
        elapsed = time.perf_counter() - start
        time.sleep(0.05)
        return int(out.stdout) / seconds, (self.delivered() - before) / elapsed


def measure(mode: str, services: int, mix: str, seconds: float = 2.0) -> Result:
    with Rig() as rig:
        rig.setup(mode, services, local_backend=mix == "new-flow")
        rig.frame(16 if mix == "established" else 0)
        rig.run(0.3)  # warm up: neighbour state, conntrack, caches
        if mix == "established" and mode in ("iptables", "nftables"):
            rig.answer_flows()  # established to conntrack too, as flows with replies are
        gen, delivered, generator = rig.run(seconds)
        return Result(mode, services, mix, gen, delivered, generator)


def matrix(
    modes=MODES,
    services=(1, 1000, 10000),
    mixes=("established",),
    seconds: float = 2.0,
    repeats: int = 3,
    log=print,
) -> list[Result]:
    """Every combination, `repeats` times, interleaved (mode after mode, then again), so that
    a noisy moment on a shared machine hits all balancers alike; one Result per run."""
    results = []
    for mix in mixes:
        for n in services:
            for rep in range(repeats):
                for mode in (m for m in modes if mix in MIX_MODES.get(m, {mix})):
                    r = measure(mode, n, mix, seconds)
                    log(
                        f"{mode:<9} {n:>6} services  {mix:<12} run {rep + 1}: "
                        f"{r.delivered_pps / 1e6:6.2f} Mpps delivered "
                        f"({r.generated_pps / 1e6:.2f} Mpps generated, {r.generator})"
                    )
                    results.append(r)
    return results


def medians(results: list[Result]) -> dict[tuple[str, int, str], tuple[float, float, float]]:
    """(mix, services, mode) -> (median, min, max) of delivered pps."""
    runs: dict[tuple[str, int, str], list[float]] = {}
    for r in results:
        runs.setdefault((r.mix, r.services, r.mode), []).append(r.delivered_pps)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in runs.items()}


def report(results: list[Result]) -> str:
    """A markdown table: each balancer's median rate (and spread), its ratio to iptables and
    to the bare-XDP ceiling, from medians of interleaved runs."""
    med = medians(results)
    rows = [
        "| mix | Services | balancer | delivered Mpps, median (min-max) | × iptables "
        "| % of bare XDP |",
        "|---|---|---|---|---|---|",
    ]
    for (mix, n, mode), (m, lo, hi) in med.items():
        ipt = med.get((mix, n, "iptables"), (0,))[0]
        bare = med.get((mix, n, "bare-xdp"), (0,))[0]
        rows.append(
            f"| {mix} | {n} | {mode} | {m / 1e6:.2f} ({lo / 1e6:.2f}-{hi / 1e6:.2f}) | "
            + (f"{m / ipt:.1f}" if ipt else "-")
            + " | "
            + (f"{100 * m / bare:.0f}%" if bare else "-")
            + " |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser(
        prog="xlb bench dataplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--services", default="1,1000,10000")
    parser.add_argument("--mixes", default="established")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per cell")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    results = matrix(
        args.modes.split(","),
        [int(x) for x in args.services.split(",")],
        args.mixes.split(","),
        args.seconds,
        args.repeats,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the user-space generator's results beside the live frames', never in their place
    name = "dataplane" if all(r.generator == LIVE for r in results) else "dataplane-afpacket"
    meta = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}",
        "time": time.strftime("%Y-%m-%d %H:%M"),
    }
    (out / f"{name}.json").write_text(
        json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2)
    )
    (out / f"{name}.md").write_text(
        f"Measured on {meta['machine']}, {meta['time']}.\n\n" + report(results)
    )
    try:
        from bench import plots

        plots.dataplane(results, out / f"{name}.png", f"north-south, UDP, {meta['machine']}")
    except ImportError as exc:  # the table stands without the picture
        print(f"no plot ({exc}): install the bench extra (pip install -e '.[bench]')")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
