"""One node in network namespaces for end-to-end tests: the node, an outside client on each
of the node's LANs (one veth each, the node side named up0, up1, ...), pods behind the node
(veth, /32 routes, tests/netns/pod_server.py), a cgroup for the socket hooks and a pin root
of this run's; and the real `xlb` CLI run on the node. Everything is removed afterwards."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.datapath.attach import cgroup2_root
from controlplane.lab.processes import join_cgroup
from tests.helpers import REPO
from tests.kernel import inside, netns, owned, reap, remove_pins, sh, unique


@dataclass(frozen=True)
class Lan:
    node_ip: str  # on the node's upN
    client_ip: str  # on the client's c0
    prefix: int = 24


@dataclass
class NodeTopology:
    tmp: Path
    node: str
    clients: list[str]  # one namespace per LAN, in the order of the lans
    pods: dict[str, str]  # pod name -> namespace
    pin_root: str
    cgroup: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def client(self) -> str:
        return self.clients[0]

    def xlb_cmd(self, *args: str, wrap: tuple[str, ...] = ()) -> list[str]:
        """The real CLI on the node: only the network namespace is entered, so the pins land
        in the host's bpffs and outlive the command (ip netns exec would remount /sys);
        wrap runs before it inside the namespace (e.g. setpriv). nsenter execs, so the
        process is the CLI itself."""
        enter = ["nsenter", f"--net=/run/netns/{self.node}", *wrap]
        return [*enter, sys.executable, "-m", "controlplane.cli", *args]

    def xlb(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.xlb_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def run_in(self, ns: str, *cmd: str, cgroup: bool = False, timeout: float = 30, **kw):
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=functools.partial(join_cgroup, self.cgroup) if cgroup else None,
            **kw,
        )

    def curl(
        self, ns: str, url: str, cgroup: bool = False, max_time: float = 3
    ) -> subprocess.CompletedProcess:
        return self.run_in(ns, "curl", "-sS", "--max-time", str(max_time), url, cgroup=cgroup)

    def down(self) -> None:
        """What xlb attached and pinned on this node, gone (safe to repeat)."""
        ups = [f"up{i}" for i in range(len(self.clients))]
        self.xlb("datapath", "down", "--uplink", ",".join(ups), "--cgroup", self.cgroup,
                 "--pin-root", self.pin_root)  # fmt: skip
        remove_pins(self.pin_root)


@functools.cache
def _xdp_pass():
    """bpf/xdp_pass.c, compiled once; the BPF object is kept (cached) with the function, as
    its finaliser would close the program's fd."""
    import bcc

    from controlplane.datapath.programs import BPF_DIR

    bpf = bcc.BPF(text=(BPF_DIR / "xdp_pass.c").read_bytes())
    return bpf, bpf.load_func(b"xdp_pass", bcc.BPF.XDP)


def _pod(node: str, ns: str, host_side: str, ip: str) -> None:
    a, b = unique("xp"), unique("xq")
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "netns", ns, "name", "eth0")
    sh("ip", "link", "set", b, "netns", node, "name", host_side)
    # a /32 and a link-scoped gateway: pod to pod goes through the node
    sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "route", "add", "10.244.1.1", "dev", "eth0", "scope", "link")
    sh("ip", "-n", ns, "route", "add", "default", "via", "10.244.1.1")
    sh("ip", "-n", node, "addr", "add", "10.244.1.1/32", "dev", host_side)
    sh("ip", "-n", node, "link", "set", host_side, "up")
    sh("ip", "-n", node, "route", "add", f"{ip}/32", "dev", host_side)


@contextlib.contextmanager
def node_topology(tmp: Path, lans: list[Lan], pods: dict[str, str]) -> Iterator[NodeTopology]:
    """The node with one client per LAN and the pods (name -> IP), their servers running."""
    import bcc

    reap("/sys/fs/bpf", "xlb-test-")
    reap(cgroup2_root(), "xlbt-")
    _, xdp_pass = _xdp_pass()
    pin_root = f"/sys/fs/bpf/{owned('xlb-test-')}"
    cgroup = os.path.join(cgroup2_root(), owned("xlbt-"))
    os.mkdir(cgroup)
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(netns())
        clients = [stack.enter_context(netns()) for _ in lans]
        pod_ns = {name: stack.enter_context(netns()) for name in pods}
        t = NodeTopology(tmp, node, clients, pod_ns, pin_root, cgroup)
        try:
            sh("ip", "-n", node, "link", "set", "lo", "up")
            for i, (lan, client) in enumerate(zip(lans, clients, strict=True)):
                a, b = unique("xa"), unique("xb")
                sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                sh("ip", "link", "set", a, "netns", client, "name", "c0")
                sh("ip", "link", "set", b, "netns", node, "name", f"up{i}")
                for ns, dev, addr in ((client, "c0", lan.client_ip), (node, f"up{i}", lan.node_ip)):
                    sh("ip", "-n", ns, "addr", "add", f"{addr}/{lan.prefix}", "dev", dev)
                    sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", client, "link", "set", "lo", "up")
                sh("ip", "-n", client, "route", "add", "default", "via", lan.node_ip)
                # frames from outside carry full checksums, as on a wire: a veth peer with TX
                # offload would hand XDP a partial (pseudo-header) checksum
                sh("ip", "netns", "exec", client, "ethtool", "-K", "c0", "tx", "off")
                # a veth delivers what XDP sends back (XDP_TX: ARP/NDP answers) only to a peer
                # with an XDP program of its own (GRO on was not enough here)
                with inside(client):
                    bcc.BPF.attach_xdp(b"c0", xdp_pass, 1 << 2)
            for i, (name, ip) in enumerate(pods.items()):
                _pod(node, pod_ns[name], f"vpod{i}", ip)
                log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
                t.procs.append(
                    subprocess.Popen(
                        [
                            "nsenter",
                            f"--net=/run/netns/{pod_ns[name]}",
                            sys.executable,
                            str(REPO / "tests" / "netns" / "pod_server.py"),
                            name,
                            ip,
                        ],
                        stdout=log,
                        stderr=log,
                    )  # fmt: skip
                )
            time.sleep(0.3)
            yield t
        finally:
            t.down()
            for p in t.procs:
                p.kill()
                p.wait()
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)


class AgentProcess:
    """`xlb agent` running on the node; stopped (SIGTERM, then killed) on exit."""

    def __init__(
        self,
        topo: NodeTopology,
        args: list[str],
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ):
        self.topo = topo
        self.log = topo.tmp / f"agent-{unique('a')}.log"
        self.out = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            topo.xlb_cmd("agent", *args, wrap=tuple(wrap or ())),
            cwd=REPO,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text()

    def wait_ready(self, url: str = "http://127.0.0.1:10256/healthz", timeout: float = 90) -> None:
        """Until url answers 200 from inside the node (healthz turns 200 after the first sync)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}):\n{self.text()}")
            probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1"]
            code = self.topo.run_in(self.topo.node, *probe, url).stdout
            if code == "200":
                return
            time.sleep(0.2)
        raise AssertionError(f"the agent was not ready in {timeout} s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the manifests these nodes run ---------------------------------------------------------------


def node_doc(name: str, *addresses: str, external: tuple[str, ...] = ()) -> str:
    """A Node object with InternalIPs (and ExternalIPs)."""
    listed = [f"{{type: InternalIP, address: {a}}}" for a in addresses]
    listed += [f"{{type: ExternalIP, address: {a}}}" for a in external]
    return f"""
apiVersion: v1
kind: Node
metadata: {{name: {name}}}
status: {{addresses: [{", ".join(listed)}]}}
"""


def pod_doc(name: str, ip: str, node: str = "node-1", app: str = "web", port: int = 8080) -> str:
    """A Pod on node at ip, serving port (tests/netns/pod_server.py answers on it)."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers: [{{name: {app}, ports: [{{containerPort: {port}}}]}}]
status: {{podIP: {ip}}}
"""


def service_doc(name: str, cluster_ip: str, type_: str = "NodePort", node_port: int = 30080) -> str:
    """A Service of port 80 -> 8080 selecting app=web."""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {type_}
  clusterIP: {cluster_ip}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: {node_port}}}]
"""


def manifest(*docs: str) -> str:
    return "---".join(docs)


# The addresses these tests use: the node's LAN (up0) and a second network (up1), and a pod.
NODE_IP, CLIENT_IP = "192.168.198.201", "192.168.198.100"
NODE_IP2, CLIENT_IP2 = "192.168.199.201", "192.168.199.100"
POD_IP = "10.244.1.5"


def web_cluster(*more: str, type_: str = "NodePort") -> str:
    """node-1 on the LAN, Service web (10.96.0.50, NodePort 30080) and its pod web-1, and
    more documents beside them."""
    web = service_doc("web", "10.96.0.50", type_=type_)
    return manifest(node_doc("node-1", NODE_IP), *more, web, pod_doc("web-1", POD_IP))
