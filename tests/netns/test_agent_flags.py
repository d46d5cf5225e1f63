"""Every flag of `xlb agent`, end to end: the real agent process runs on a node in network
namespaces with the flag under test, and each row checks what the flag should change where
a user would see it (traffic, `xlb status`, the kernel's attachments, the ports served, the
API server's objects), not the config field it lands in. The one stand-in is the API server
of the Kubernetes rows (tests/k8s/apiserver.py, bound inside the node's namespace)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane.cli import build_parser
from tests.helpers import eventually
from tests.k8s.apiserver import ApiServer
from tests.kernel import inside
from tests.netns.nodes import AgentProcess, Lan, NodeTopology, node_topology

NODE_IP, CLIENT_IP, EXTERNAL_IP = "192.168.198.201", "192.168.198.100", "203.0.113.201"
POD_IP = "10.244.1.5"
EXT_IP = "198.51.100.7"

MANIFEST = f"""
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
status:
  addresses:
  - {{type: InternalIP, address: {NODE_IP}}}
  - {{type: ExternalIP, address: {EXTERNAL_IP}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-2}}
status: {{addresses: [{{type: InternalIP, address: 192.168.198.202}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: mine
  labels: {{service.kubernetes.io/service-proxy-name: xlb}}
spec:
  clusterIP: 10.96.0.60
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.70
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30070}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec:
  clusterIP: 10.96.0.80
  externalIPs: [{EXT_IP}]
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec:
  nodeName: node-1
  containers: [{{name: web, ports: [{{containerPort: 8080}}]}}]
status: {{podIP: {POD_IP}}}
"""
POOL = "lab=192.168.198.240/29"
LB_IP = "192.168.198.240"


@dataclass
class Run:
    """What a row's check has: the node, the agent, and (Kubernetes rows) the API server."""

    topo: NodeTopology
    agent: AgentProcess
    manifest: Path
    api: ApiServer | None = None

    def status(self) -> dict:
        out = self.topo.xlb("status", "--json", "--pin-root", self.topo.pin_root)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def frontends(self, kind_scope: str | None = None) -> set[tuple[str, int, str]]:
        return {
            (f["address"], f["port"], f["scope"])
            for f in self.status()["frontends"]
            if kind_scope is None or f["scope"] == kind_scope
        }

    def in_node(self, *cmd: str) -> subprocess.CompletedProcess:
        return self.topo.run_in(self.topo.node, *cmd)

    def http_code(self, url: str) -> str:
        return self.in_node("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "2", url).stdout  # fmt: skip

    def syncs(self, metrics: str = "http://127.0.0.1:10249/metrics") -> int:
        text = self.in_node("curl", "-s", "--max-time", "2", metrics).stdout
        found = re.search(
            r'^kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="IPv4"\} (\S+)$',
            text,
            re.M,
        )
        assert found, text[:2000]
        return int(float(found.group(1)))

    def touch(self, i: int) -> None:
        """A change to the manifests that moves nothing (a new annotation)."""
        self.manifest.write_text(MANIFEST + f"---\n# edit {i}\n" + "apiVersion: v1\n"
                                 f"kind: ConfigMap\nmetadata: {{name: edit-{i}}}\n")  # fmt: skip


@dataclass(frozen=True)
class Row:
    flag: str
    args: tuple[str, ...]
    check: Callable[[Run], None]
    kubernetes: bool = False  # the Kubernetes source, against the API stand-in
    ready: str = "http://127.0.0.1:10256/healthz"
    files: dict[str, str] = field(default_factory=dict)  # name -> content, under the run's dir
    before: Callable[[NodeTopology], None] | None = None  # run on the node before the agent


def _nodeport_reaches_the_pod(run: Run) -> None:
    out = run.topo.curl(run.topo.client, f"http://{NODE_IP}:30080/")
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


def _node(run: Run) -> None:
    """node-2's view: its own address is a NodePort and the SNAT source, and web-1 (on
    node-1) is remote. (The served device's addresses are NodePorts too, whoever's.)"""
    fes = run.frontends("external")
    assert ("192.168.198.202", 30080, "external") in fes, fes
    assert run.status()["nodeAddresses"][0] == "192.168.198.202"
    assert all(not b["local"] for b in run.status()["backends"])  # web-1 is on node-1


def _node_ip(run: Run) -> None:
    assert run.status()["nodeAddresses"][0] == "192.168.198.99"


def _nodeport_cidr(run: Run) -> None:
    addresses = {a for a, p, _ in run.frontends("external") if p == 30080}
    assert addresses == {NODE_IP}, addresses
    _nodeport_reaches_the_pod(run)


def _nodeport_default(run: Run) -> None:
    addresses = {a for a, p, _ in run.frontends("external") if p == 30080}
    assert addresses == {NODE_IP, EXTERNAL_IP}, addresses


def _algorithms(scope: str, algorithm: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        got = {f["algorithm"] for f in run.status()["frontends"] if f["scope"] == scope}
        assert got == {algorithm}, got

    return check


def _forwarding_mode(run: Run) -> None:
    """hybrid: the external TCP frontends are flagged for DSR in the kernel (their remote
    backends would need xlb on their node: this node's backend is local, so its flows are
    delivered here as ever), the ClusterIPs and node-internal ones never."""
    flagged = {(f["address"], f["scope"]) for f in run.status()["frontends"] if "dsr" in f["flags"]}
    assert (EXT_IP, "external") in flagged and (LB_IP, "external") in flagged, flagged
    assert all(scope == "external" for _, scope in flagged), flagged
    out = run.topo.curl(run.topo.client, f"http://{NODE_IP}:30080/")
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


def _proxy_name(run: Run) -> None:
    addresses = {a for a, _, _ in run.frontends()}
    assert "10.96.0.60" in addresses and "10.96.0.50" not in addresses, addresses


def _unlabelled_only(run: Run) -> None:
    addresses = {a for a, _, _ in run.frontends()}
    assert "10.96.0.50" in addresses and "10.96.0.60" not in addresses, addresses


def _uplink(run: Run) -> None:
    up0 = run.in_node("ip", "-d", "link", "show", "dev", "up0").stdout
    assert "prog/xdp" in up0 and "xdpgeneric" not in up0, up0
    assert "xdp" not in run.in_node("ip", "-d", "link", "show", "dev", "vpod0").stdout
    _nodeport_reaches_the_pod(run)


def _devices_auto(run: Run) -> None:
    """auto with the node's address: up0 (which holds it), not the pod's veth."""
    served = {a["device"] for a in run.status()["attachments"] if a["kind"] == "xdp"}
    assert served == {"up0"}, served
    _nodeport_reaches_the_pod(run)


def _generic_xdp(run: Run) -> None:
    up0 = run.in_node("ip", "-d", "link", "show", "up0").stdout
    assert "xdpgeneric" in up0, up0
    _nodeport_reaches_the_pod(run)


def _cgroup(run: Run) -> None:
    shown = subprocess.run(["bpftool", "cgroup", "show", run.topo.cgroup], capture_output=True,
                           text=True).stdout  # fmt: skip
    for hook in ("connect4", "connect6", "sendmsg4", "recvmsg4", "getpeername4"):
        assert hook in shown, shown
    out = run.topo.curl(run.topo.node, "http://10.96.0.50/", cgroup=True)
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


def _pin_root(run: Run) -> None:
    for name in ("services", "backends", "ct", "config"):
        assert Path(run.topo.pin_root, name).exists(), name


def _map_size(name: str, entries: int) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        info = subprocess.run(
            ["bpftool", "-j", "map", "show", "pinned", f"{run.topo.pin_root}/{name}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert json.loads(info)["max_entries"] == entries, info

    return check


def _ring_size(run: Run) -> None:
    status = run.status()
    assert status["maglev"]["largestSize"] == 1021
    # the NodePort's table is built (one backend: the smallest size, under the cap)
    sizes = {f["maglevTable"] for f in status["frontends"] if f["algorithm"] == "maglev"}
    assert sizes == {251}, status["frontends"]


def _local_delivery(run: Run) -> None:
    """redirect: the NodePort's packets reach the local pod through tc_lb_in's redirect into
    its namespace, and the pod's answers the uplink through tc_lb_pod's (both counted); the
    pod still sees the client, and the client gets its answers from the NodePort."""
    reasons = run.status()["reasons"]
    before = reasons.get("local_redirected", 0), reasons.get("local_reply_redirected", 0)
    for _ in range(3):
        out = run.topo.curl(run.topo.client, f"http://{NODE_IP}:30080/")
        assert out.returncode == 0 and out.stdout.startswith(f"web-1 {CLIENT_IP}"), out.stderr
    status = run.status()
    assert status["localDelivery"] == "redirect"
    assert status["reasons"]["local_redirected"] - before[0] >= 3 * 3  # SYN, ACK, request, ...
    assert status["reasons"]["local_reply_redirected"] - before[1] >= 3 * 2  # SYN-ACK, answer


def _max_rings(run: Run) -> None:
    """Accepted (a DaemonSet from before keeps starting), said to do nothing."""
    assert "--max-rings no longer has any effect" in run.agent.text()
    assert all(f["maglevTable"] for f in run.status()["frontends"] if f["algorithm"] == "maglev")


def _bind_address(run: Run) -> None:
    assert run.http_code("http://127.0.0.1:10256/healthz") == "200"
    assert run.http_code(f"http://{NODE_IP}:10256/healthz") == "000"  # nothing listens there


def _metrics_local_only(run: Run) -> None:
    """kube-proxy's default: metrics answer on the node's loopback, not its address."""
    assert run.syncs() >= 1
    assert run.http_code(f"http://{NODE_IP}:10249/metrics") == "000"
    assert run.http_code(f"http://{NODE_IP}:10256/healthz") == "200"  # probes from outside


def _metrics_everywhere(run: Run) -> None:
    assert run.http_code(f"http://{NODE_IP}:10249/metrics") == "200"


def _healthz_port(run: Run) -> None:
    assert run.http_code("http://127.0.0.1:20256/healthz") == "200"
    assert run.http_code("http://127.0.0.1:10256/healthz") == "000"


def _metrics_port(run: Run) -> None:
    assert run.syncs("http://127.0.0.1:20249/metrics") >= 1
    assert run.http_code("http://127.0.0.1:10249/metrics") == "000"
    assert run.in_node("curl", "-s", "http://127.0.0.1:20249/proxyMode").stdout == "xlb"


def _metrics_off(run: Run) -> None:
    assert run.http_code("http://127.0.0.1:10249/metrics") == "000"
    assert run.http_code("http://127.0.0.1:10256/healthz") == "200"


def _healthz_off(run: Run) -> None:
    assert run.http_code("http://127.0.0.1:10256/healthz") == "000"
    assert run.syncs() >= 1


def _health_timeout(run: Run) -> None:
    """An update that waits longer than the timeout turns healthz 503 (here it waits out
    the 4 s between syncs), and 200 again once it is programmed."""
    run.touch(1)
    assert eventually(lambda: run.http_code("http://127.0.0.1:10256/healthz") == "503", 4)
    assert eventually(lambda: run.http_code("http://127.0.0.1:10256/healthz") == "200", 15)


def _coalesced(run: Run) -> None:
    """Five edits in 1.2 s: the agent syncs at most twice for them (one sync per edit at the
    defaults; each `wait` flag alone bounds it)."""
    before = run.syncs()
    for i in range(5):
        run.touch(i)
        time.sleep(0.3)
    time.sleep(6)
    done = run.syncs() - before
    print(f"five edits in 1.2 s became {done} syncs")
    assert 1 <= done <= 2, done


def _not_coalesced(run: Run) -> None:
    """The control for the two rows above: at the defaults, each edit is its own sync."""
    before = run.syncs()
    for i in range(5):
        run.touch(i)
        time.sleep(0.3)
    assert eventually(lambda: run.syncs() - before >= 4, 5), run.syncs() - before


def _announces(run: Run) -> None:
    def answered() -> str:
        out = run.topo.run_in(run.topo.client, "arping", "-c", "1", "-w", "2", "-I", "c0", LB_IP)
        said.append(out.stdout + out.stderr)
        return "bytes from" in out.stdout

    said: list[str] = []
    assert eventually(lambda: LB_IP in run.status()["announcing"]["addresses"], 10), run.status()
    assert eventually(answered, 10), f"no ARP answer: {said[-1]} {run.status()['reasons']}"
    out = run.topo.curl(run.topo.client, f"http://{LB_IP}/")
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


GARPS = """
import json, sys
from scapy.all import sniff
from scapy.layers.l2 import ARP
seen = []
sniff(iface="c0", timeout=float(sys.argv[2]), store=False,
      prn=lambda p: seen.append(round(float(p.time), 2))
      if ARP in p and p[ARP].psrc == p[ARP].pdst == sys.argv[1] else None)
print(json.dumps(seen))
"""


def _refreshes(every: float | None):
    """The LAN hears LB_IP's gratuitous ARP again every `every` seconds once its takeover's
    repeats (2 s) are over; None: never again."""

    def check(run: Run) -> None:
        assert eventually(lambda: LB_IP in run.status()["announcing"]["addresses"], 10)
        time.sleep(2.5)  # the takeover's own repeats are over
        out = run.topo.run_in(run.topo.client, sys.executable, "-c", GARPS, LB_IP, "5")
        times = sorted(set(json.loads(out.stdout)))
        rounds = sorted({round(t) for t in times})
        if every is None:
            assert times == [], times
        else:
            assert len(rounds) >= 2 and all(
                abs((b - a) - every) < 0.6 for a, b in zip(rounds, rounds[1:], strict=False)
            ), times

    return check


def _silent_without_key(run: Run) -> None:
    assert (LB_IP, 80, "external") in run.frontends()  # the pool's address is served ...
    assert run.status()["announcing"]["addresses"] == []  # ... but not announced
    bound = run.in_node("ss", "-Hulnp").stdout
    assert ":7947 " not in bound, bound


def _gossip_port(run: Run) -> None:
    bound = run.in_node("ss", "-Huln").stdout
    assert ":7999 " in bound and ":7947 " not in bound, bound


def _peer(run: Run) -> None:
    """The peer given (the client's address, a port it listens on) hears the agent's gossip."""
    listen = run.topo.run_in(
        run.topo.client, "timeout", "5", "python3", "-c",
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{CLIENT_IP}', 7998)); data, src = s.recvfrom(65535); print(src[0], len(data))",
        timeout=10,
    )  # fmt: skip
    assert listen.returncode == 0, listen.stderr
    assert listen.stdout.split()[0] == NODE_IP, listen.stdout


def _external_ips(served: bool, policy: str) -> Callable[[Run], None]:
    """The externalIP is served or not, and `xlb status` names the policy and the refusal."""

    def check(run: Run) -> None:
        assert ((EXT_IP, 80, "external") in run.frontends()) is served, run.frontends()
        if not served:
            assert eventually(lambda: f"not served: {EXT_IP}" in run.agent.text(), 5)
        agent = run.status()["agent"]
        assert agent["running"] and agent["pid"] == run.agent.pid(), agent
        assert agent["externalIPs"] == policy, agent
        refused = [r for r in agent["refusedExternalIPs"] if EXT_IP in r]
        assert bool(refused) is not served and all(r.startswith("default/ext: ") for r in refused)
        shown = run.topo.xlb("status", "--pin-root", run.topo.pin_root).stdout
        assert f"externalIPs (--external-ips {policy}): " in shown, shown
        assert (f"  default/ext: not served: {EXT_IP}" in shown) is not served, shown

    return check


CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout"))
"""


def _unallocated(dropped: bool) -> Callable[[Run], None]:
    """From the node's own processes: a ClusterIP on a port it does not serve is refused
    either way; an address of the service ranges that no Service holds gets EHOSTUNREACH at
    once only while dropped (allow: the routing has it)."""

    def check(run: Run) -> None:
        def connect(host: str, port: int) -> str:
            out = run.topo.run_in(run.topo.node, sys.executable, "-c", CONNECT, host, str(port),
                                  cgroup=True)  # fmt: skip
            return out.stdout.strip()

        assert eventually(lambda: connect("10.96.0.50", 81) == "ECONNREFUSED", 5)
        got = connect("10.96.0.99", 80)
        assert (got == "EHOSTUNREACH") is dropped, got

    return check


AUTO_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: auto}
spec:
  selector: {app: web}
  ports: [{port: 81, targetPort: 8080}]
"""


def _service_range(run: Run) -> None:
    """The Service without a fixed ClusterIP gets one from the first range of its family,
    and it carries traffic to the pod."""
    import ipaddress

    got = [a for a, p, _ in run.frontends("internal") if p == 81]
    assert len(got) == 1 and ipaddress.ip_address(got[0]) in ipaddress.ip_network("10.68.0.0/16")
    out = run.topo.run_in(run.topo.node, "curl", "-s", "--max-time", "3", f"http://{got[0]}:81/",
                          cgroup=True)  # fmt: skip
    assert out.stdout.startswith("web-1 "), (out.stdout, out.stderr)


def _ct_timeout(name: str, seconds: int) -> Callable[[Run], None]:
    """The timeout the programs use (the config map, as `xlb status` shows it); the others
    keep maps.h's defaults."""
    from controlplane.datapath.conntrack import Timeouts

    def check(run: Run) -> None:
        shown = run.status()["conntrack"]["timeouts"]
        assert shown == {**dataclasses.asdict(Timeouts()), name: seconds}, shown

    return check


def _hash_seed(given: str | None) -> Callable[[Run], None]:
    """The seed the programs hash with, as `xlb status` shows it (a fingerprint): from the
    flag, or (Kubernetes, no flag) from the kube-system namespace's uid."""
    from controlplane.datapath.config import hash_seed_of, seed_fingerprint

    def check(run: Run) -> None:
        if given is None:
            uid = run.api.objects["/api/v1/namespaces"][("", "kube-system")]["metadata"]["uid"]
            want = seed_fingerprint(hash_seed_of(uid))
        else:
            want = seed_fingerprint(hash_seed_of(given))
        assert run.status()["hashSeed"] == want != "default (public)"
        if given is not None:
            _nodeport_reaches_the_pod(run)  # Maglev with the cluster's seed still balances

    return check


def _pool(run: Run) -> None:
    assert (LB_IP, 80, "external") in run.frontends()
    out = run.topo.curl(run.topo.client, f"http://{LB_IP}/")  # routed via the node (fixture)
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


def _xdp_prog_id(topo: NodeTopology) -> int:
    shown = json.loads(topo.run_in(topo.node, "ip", "-j", "-d", "link", "show", "up0").stdout)
    return shown[0]["xdp"]["prog"]["id"]


def _prepare_node(topo: NodeTopology) -> None:
    out = topo.xlb("prepare-node", "--uplink", "up0", "--cgroup", topo.cgroup,
                   "--pin-root", topo.pin_root)  # fmt: skip
    assert out.returncode == 0, out.stderr
    topo.preloaded_prog = _xdp_prog_id(topo)


def _preloaded(run: Run) -> None:
    """The agent used what prepare-node attached: the same XDP program, serving."""
    assert _xdp_prog_id(run.topo) == run.topo.preloaded_prog
    _nodeport_reaches_the_pod(run)


# -- the Kubernetes source -----------------------------------------------------------------------


PROXY_LABEL = {"service.kubernetes.io/service-proxy-name": "xlb"}


def _service(name: str, ip: str, labels: dict | None = None, **spec) -> dict:
    spec = {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}], **spec}
    meta = {"name": name, "namespace": "default", "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def _endpoints(name: str, endpoints_api: str) -> dict:
    meta = {"name": name, "namespace": "default"}
    if endpoints_api == "endpoints":
        subset = {"addresses": [{"ip": POD_IP, "nodeName": "node-1"}], "ports": [{"port": 8080}]}
        return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": [subset]}
    meta = {**meta, "name": f"{name}-a", "labels": {"kubernetes.io/service-name": name}}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [POD_IP], "nodeName": "node-1"}],
    }


def _api_objects(api: ApiServer, endpoints_api: str, lb_class: str) -> None:
    """What the manifest rows' cluster holds, as API objects."""
    address = {"type": "InternalIP", "address": NODE_IP}
    node = {"metadata": {"name": "node-1"}, "status": {"addresses": [address]}}
    api.apply({"apiVersion": "v1", "kind": "Node", **node})
    lb_ports = [{"port": 80, "targetPort": 8080, "nodePort": 30070}]
    lb = {"type": "LoadBalancer", "ports": lb_ports}
    if lb_class:
        lb["loadBalancerClass"] = lb_class
    api.apply(_service("web", "10.96.0.50"))
    api.apply(_service("mine", "10.96.0.60", PROXY_LABEL))
    api.apply(_service("lb", "10.96.0.70", **lb))
    for name in ("web", "mine", "lb"):
        api.apply(_endpoints(name, endpoints_api))


def _from_the_api(run: Run) -> None:
    assert ("10.96.0.50", 80, "internal") in run.frontends()
    out = run.topo.curl(run.topo.node, "http://10.96.0.50/", cgroup=True)
    assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr


def _from_endpoints(run: Run) -> None:
    _from_the_api(run)
    assert run.api.requests[("/api/v1/endpoints", "list")] >= 1
    assert run.api.requests[("/apis/discovery.k8s.io/v1/endpointslices", "list")] == 0


def _lb_status(run: Run) -> None:
    def ingress() -> list:
        obj = run.api.objects["/api/v1/services"][("default", "lb")]
        return (obj.get("status") or {}).get("loadBalancer", {}).get("ingress", [])

    assert eventually(lambda: ingress() == [{"ip": LB_IP, "ipMode": "VIP"}], 20), ingress()
    assert eventually(lambda: (LB_IP, 80, "external") in run.frontends(), 10)


def _no_allocator(run: Run) -> None:
    time.sleep(2)  # the allocator takes the Lease at once when it runs at all
    leases = [k for k in run.api.writes if k[1] == "/apis/coordination.k8s.io/v1/leases"]
    assert leases == [], leases
    obj = run.api.objects["/api/v1/services"][("default", "lb")]
    assert not (obj.get("status") or {}).get("loadBalancer", {}).get("ingress")


def _allocator(run: Run) -> None:
    """The control for --no-lb-allocator: by default the agent takes the Lease and writes."""
    _lb_status(run)
    assert any(k[1] == "/apis/coordination.k8s.io/v1/leases" for k in run.api.writes)


ROWS = [
    Row("--filename", (), _nodeport_reaches_the_pod),
    Row("--node", ("--node", "node-2"), _node),
    Row("--node-ip", ("--node-ip", "192.168.198.99"), _node_ip),
    Row("--nodeport-addresses CIDR", ("--nodeport-addresses", "192.168.198.0/24"), _nodeport_cidr),
    Row("--nodeport-addresses primary", ("--nodeport-addresses", "primary"), _nodeport_cidr),
    Row("--nodeport-addresses (default)", (), _nodeport_default),
    Row(
        "--external-algorithm",
        ("--external-algorithm", "source-hash"),
        _algorithms("external", "source-hash"),
    ),  # fmt: skip
    Row(
        "--internal-algorithm",
        ("--internal-algorithm", "maglev"),
        _algorithms("internal", "maglev"),
    ),  # fmt: skip
    Row("--forwarding-mode", ("--forwarding-mode", "hybrid", "--pool", POOL), _forwarding_mode),
    Row("--proxy-name", ("--proxy-name", "xlb"), _proxy_name),
    Row("--proxy-name (default)", (), _unlabelled_only),
    Row("--uplink", (), _uplink),
    Row("--devices", ("--devices", "auto", "--node-ip", NODE_IP), _devices_auto),
    Row("--generic-xdp", ("--generic-xdp",), _generic_xdp),
    Row("--preloaded", ("--preloaded",), _preloaded, before=_prepare_node),
    Row("--cgroup", (), _cgroup),
    Row("--pin-root", (), _pin_root),
    Row("--ct-size", ("--ct-size", "2048"), _map_size("ct", 2048)),
    Row("--max-rings", ("--max-rings", "2"), _max_rings),
    Row("--local-delivery", ("--local-delivery", "redirect"), _local_delivery),
    Row("--ring-size", ("--ring-size", "1021"), _ring_size),
    Row("--bind-address", ("--bind-address", "127.0.0.1"), _bind_address),
    Row(
        "--healthz-port",
        ("--healthz-port", "20256"),
        _healthz_port,
        ready="http://127.0.0.1:20256/healthz",
    ),  # fmt: skip
    Row(
        "--healthz-port -1",
        ("--healthz-port", "-1"),
        _healthz_off,
        ready="http://127.0.0.1:10249/metrics",
    ),  # fmt: skip
    Row("--metrics-bind-address (default)", (), _metrics_local_only),
    Row("--metrics-bind-address", ("--metrics-bind-address", "0.0.0.0"), _metrics_everywhere),
    Row("--metrics-port", ("--metrics-port", "20249"), _metrics_port),
    Row("--metrics-port -1", ("--metrics-port", "-1"), _metrics_off),
    Row(
        "--health-timeout", ("--health-timeout", "0.5", "--min-sync-interval", "4"), _health_timeout
    ),  # fmt: skip
    Row("--min-sync-interval", ("--min-sync-interval", "5"), _coalesced),
    Row(
        "--poll-interval",
        ("--poll-interval", "5"),
        _coalesced,
        ready="http://127.0.0.1:10256/healthz",
    ),  # fmt: skip
    Row("--poll-interval/--min-sync-interval (defaults)", (), _not_coalesced),
    Row("--external-ips (default allow)", (), _external_ips(True, "allow")),
    Row("--external-ips deny", ("--external-ips", "deny"), _external_ips(False, "deny")),
    Row(
        "--external-ips CIDR",
        ("--external-ips", "198.51.100.0/24"),
        _external_ips(True, "198.51.100.0/24"),
    ),
    Row(
        "--external-ips CIDR (outside)",
        ("--external-ips", "203.0.113.0/24"),
        _external_ips(False, "203.0.113.0/24"),
    ),
    Row("--unallocated-cluster-ips (default drop)", (), _unallocated(True)),
    Row(
        "--unallocated-cluster-ips allow",
        ("--unallocated-cluster-ips", "allow"),
        _unallocated(False),
    ),
    Row("--pool", ("--pool", POOL), _pool),
    Row("--hash-seed", ("--hash-seed", "our-cluster-secret"), _hash_seed("our-cluster-secret")),
    Row("--hash-seed (kubernetes: kube-system's uid)", (), _hash_seed(None), kubernetes=True),
    *[
        Row(flag, (flag, given), _ct_timeout(name, seconds))
        for flag, given, name, seconds in (
            ("--conntrack-tcp-timeout-established", "6h0m0s", "tcp_est", 21600),
            ("--conntrack-tcp-timeout-close-wait", "30m", "tcp_close_wait", 1800),
            ("--conntrack-tcp-timeout-syn", "5s", "tcp_new", 5),
            ("--conntrack-tcp-timeout-close", "20s", "tcp_close", 20),
            ("--conntrack-udp-timeout", "1m", "udp", 60),
            ("--conntrack-udp-timeout-stream", "5m0s", "udp_stream", 300),
        )
    ],
    Row(
        "--service-cluster-ip-range",
        ("-f", "{dir}/auto.yaml", "--service-cluster-ip-range", "10.68.0.0/16,10.96.0.0/12"),
        _service_range,
        files={"auto.yaml": AUTO_SERVICE},
    ),  # fmt: skip
    Row(
        "--gossip-key-file",
        ("--pool", POOL, "--gossip-key-file", "{dir}/key"),
        _announces,
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row(
        "--l2-refresh-interval",
        ("--pool", POOL, "--gossip-key-file", "{dir}/key", "--l2-refresh-interval", "2s"),
        _refreshes(2.0),
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row(
        "--l2-refresh-interval 0",
        ("--pool", POOL, "--gossip-key-file", "{dir}/key", "--l2-refresh-interval", "0"),
        _refreshes(None),
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row(
        "--l2-placement",
        ("--pool", POOL, "--gossip-key-file", "{dir}/key", "--l2-placement", "balanced"),
        _announces,
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row("--gossip-key-file (none)", ("--pool", POOL), _silent_without_key),
    Row(
        "--gossip-port",
        ("--gossip-key-file", "{dir}/key", "--gossip-port", "7999"),
        _gossip_port,
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row(
        "--peer",
        ("--gossip-key-file", "{dir}/key", "--peer", f"node-2={CLIENT_IP}:7998"),
        _peer,
        files={"key": "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"},
    ),  # fmt: skip
    Row("--source kubernetes --kubeconfig", (), _from_the_api, kubernetes=True),
    Row("--endpoints-api", ("--endpoints-api", "endpoints"), _from_endpoints, kubernetes=True),
    Row("--proxy-name (kubernetes)", ("--proxy-name", "xlb"), _proxy_name, kubernetes=True),
    Row(
        "--lb-class", ("--pool", POOL, "--lb-class", "example.com/lab"), _lb_status, kubernetes=True
    ),  # fmt: skip
    Row(
        "--no-lb-allocator", ("--pool", POOL, "--no-lb-allocator"), _no_allocator, kubernetes=True
    ),  # fmt: skip
    Row("--no-lb-allocator (default)", ("--pool", POOL), _allocator, kubernetes=True),
]


def test_every_agent_flag_has_a_row():
    """A new flag without an end-to-end row here fails this test."""
    agent = build_parser()._subparsers._group_actions[0].choices["agent"]
    flags = {a.option_strings[-1] for a in agent._actions if a.option_strings} - {"--help"}
    covered = {w for r in ROWS for w in r.flag.split() if w.startswith("--")}
    assert flags - covered == set(), f"flags without an end-to-end row: {flags - covered}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    with node_topology(tmp, [Lan(NODE_IP, CLIENT_IP)], {"web-1": POD_IP}) as topo:
        # the ExternalIP lives on the node's LAN too (node-2's address does not: the gossip
        # must find node-2 dead)
        topo.run_in(topo.node, "ip", "addr", "add", f"{EXTERNAL_IP}/32", "dev", "up0")
        # the pool's addresses through the node, announced or not (the rows that check ARP
        # ask with arping, which does not route)
        topo.run_in(topo.client, "ip", "route", "add", POOL.split("=")[1], "via", NODE_IP)
        yield topo


@contextlib.contextmanager
def _api_in(topo: NodeTopology, row: Row):
    """The API stand-in listening inside the node's namespace, with a kubeconfig for it."""
    with inside(topo.node):
        api = ApiServer()
    try:
        endpoints = "endpoints" if "endpoints" in row.args else "endpointslices"
        lb_class = row.args[row.args.index("--lb-class") + 1] if "--lb-class" in row.args else ""
        _api_objects(api, endpoints, lb_class)
        yield api
    finally:
        api.close()


@pytest.mark.parametrize("row", ROWS, ids=[r.flag for r in ROWS])
def test_agent_flag(node: NodeTopology, row: Row, tmp_path):
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(MANIFEST)
    for name, content in row.files.items():
        (tmp_path / name).write_text(content)
    args = [a.replace("{dir}", str(tmp_path)) for a in row.args]
    base = ["--node", "node-1", "--uplink", "up0", "--cgroup", node.cgroup,
            "--pin-root", node.pin_root]  # fmt: skip
    if "--node" in args:
        base = base[2:]
    with contextlib.ExitStack() as stack:
        api = None
        if row.kubernetes:
            api = stack.enter_context(_api_in(node, row))
            kubeconfig = tmp_path / "kubeconfig"
            api.write_kubeconfig(kubeconfig)
            source = ["--source", "kubernetes", "--kubeconfig", str(kubeconfig)]
        else:
            source = ["-f", str(manifest)]
        stack.callback(node.down)  # the next row starts from a bare node
        if row.before:
            row.before(node)
        agent = stack.enter_context(AgentProcess(node, [*source, *base, *args]))
        agent.wait_ready(row.ready)
        try:
            row.check(Run(node, agent, manifest, api))
        except AssertionError:
            print(agent.text()[-4000:])
            raise
