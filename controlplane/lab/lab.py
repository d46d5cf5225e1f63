"""`xlb lab`: up, apply, exec, status, down.

The lab plays the cluster: it runs the pods (each a network namespace with the built-in pod
server, its processes in its node's cgroup), decides where they run and which IPs they get,
and writes what an API server would hold (Nodes, Pods with their IPs and readiness, the
user's Services and Endpoints) into files that one `xlb agent` per node watches. A pod keeps
its node and IPs for as long as it exists: scaling never moves the others.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from .. import runstate
from ..model.objects import Pod
from ..sources.manifests import load_cluster, load_documents, pod_from, workload_pods
from ..sources.simulated import ClusterConfig, place_pods, synthesize_nodes
from . import topology as topo
from .admission import STAMP, admit
from .processes import alive, join_cgroup, rmdir_cgroup, spawn, wait_listening
from .state import FAMILIES, LabState, NodeState, PodState, lab_cluster_config
from .topology import CLIENT4, CLIENT6, EXT4, EXT6, LabError

STATE_ROOT = Path("/run/xlb")
AGENT_CATCH_UP = 0.5  # seconds: agents look every 0.1 s; endpoints leave before their pods
WORKLOADS = {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Pod"}


def lab_pool(objects: list[dict]) -> dict:
    """The LoadBalancer address pool of the lab's LAN, used when the manifests bring none;
    it also holds every address a Service asks for, as a cloud would grant it."""
    from ..model.pools import ANNOTATION_IPS

    addresses = ["192.168.198.240/28", "fd00:198::f0/124"]
    for o in objects:
        if o.get("kind") != "Service":
            continue
        spec, ann = o.get("spec") or {}, (o.get("metadata") or {}).get("annotations") or {}
        for ip in [spec.get("loadBalancerIP")] + str(ann.get(ANNOTATION_IPS, "")).split(","):
            with contextlib.suppress(ValueError, TypeError):
                a = ipaddress.ip_address(str(ip).strip())
                addresses.append(f"{a}/{a.max_prefixlen}")
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": "lab-lan", "namespace": "metallb-system"},
        "spec": {"addresses": sorted(set(addresses))},
    }


class Lab:
    def __init__(self, name: str = "lab") -> None:
        if not name.replace("-", "").isalnum() or len(name) > 20:
            raise LabError(f"xlb lab: name {name!r}: use up to 20 letters, digits and dashes")
        self.name = name
        self.dir = STATE_ROOT / f"lab-{name}"
        self.prefix = f"xlb-{name}-"
        self.pin_base = f"/sys/fs/bpf/xlb-lab-{name}"

    # -- names and state ---------------------------------------------------------------------------

    @property
    def lan_ns(self) -> str:
        return f"{self.prefix}lan"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}client"

    @property
    def ext_ns(self) -> str:
        return f"{self.prefix}ext"

    def cgroup_base(self) -> str:
        from ..datapath.attach import cgroup2_root

        return os.path.join(cgroup2_root(), f"xlb-lab-{self.name}")

    def load(self) -> LabState:
        path = self.dir / "state.json"
        if not path.exists():
            raise LabError(
                f"xlb lab: no lab named {self.name!r} is up (xlb lab up --name {self.name})"
            )
        raw = json.loads(path.read_text())
        return LabState(
            name=raw["name"],
            manifests=raw["manifests"],
            nodes=[NodeState(**n) for n in raw["nodes"]],
            pods=[PodState(**p) for p in raw["pods"]],  # (older states: ready by default)
            ext_ips=raw["ext_ips"],
            ext_ports=raw["ext_ports"],
            ext_pid=raw["ext_pid"],
            families=raw.get("families", list(FAMILIES)),
            agent_args=raw.get("agent_args", []),
            services=raw.get("services", {}),
        )

    def save(self, state: LabState) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.dir / "state.json")

    # -- up ----------------------------------------------------------------------------------------

    def up(
        self,
        manifests: list[str],
        nodes: int = 2,
        log=print,
        families: list[str] | tuple[str, ...] = FAMILIES,
        agent_args: list[str] | None = None,
        without_xlb: list[str] | tuple[str, ...] = (),
    ) -> LabState:
        """Builds the lab and starts its agents (agent_args: more flags for each). The nodes
        named in without_xlb run no agent and no xlb program: plain Linux routers with pods,
        as a node of a cluster that runs xlb on only some of its nodes."""
        if (self.dir / "state.json").exists() or topo.netns_list(self.prefix):
            raise LabError(
                f"xlb lab: lab {self.name!r} is already up; `xlb lab down --name {self.name}` first"
            )
        if nodes < 1:
            raise LabError("xlb lab: --nodes must be at least 1")
        names = {f"node-{i}" for i in range(1, nodes + 1)}
        if set(without_xlb) - names or len(set(without_xlb)) >= nodes:
            raise LabError(
                f"xlb lab: --without-xlb: some of {', '.join(sorted(names))}, but not all, "
                f"not {', '.join(without_xlb)}"
            )
        if not families or set(families) - set(FAMILIES):
            raise LabError(f"xlb lab: --ip-family: IPv4, IPv6 or both, not {list(families)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "agent").mkdir(exist_ok=True)
        state = LabState(
            self.name,
            [str(Path(m).resolve()) for m in manifests],
            families=[f for f in FAMILIES if f in families],
            agent_args=list(agent_args or []),
        )
        try:
            self._build(state, nodes, log, set(without_xlb))
        except BaseException:
            self.down(quiet=True)
            raise
        return state

    def _build(self, state: LabState, nodes: int, log, without_xlb: set[str]) -> None:
        cfg = lab_cluster_config(nodes, state.families)
        from ..datapath.attach import load_xdp_pass

        xdp_pass = load_xdp_pass()  # once; its attachments outlive this process
        topo.lan(self.lan_ns)
        topo.add_netns(self.client_ns)
        client = self._of_families(state, [CLIENT4, CLIENT6])
        topo.attach_to_lan(self.lan_ns, self.client_ns, f"{self.name}/client", client)
        os.makedirs(self.cgroup_base(), exist_ok=True)
        for node in synthesize_nodes(cfg):
            ns = f"{self.prefix}{node.name}"
            topo.add_netns(ns)
            topo.attach_to_lan(
                self.lan_ns, ns, f"{self.name}/{node.name}", list(node.addresses), xdp_pass
            )
            topo.sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            cgroup = os.path.join(self.cgroup_base(), node.name)
            os.makedirs(cgroup, exist_ok=True)
            state.nodes.append(
                NodeState(
                    node.name,
                    ns,
                    list(node.addresses),
                    list(node.pod_cidrs),
                    node.zone,
                    cgroup,
                    f"{self.pin_base}/{node.name}",
                )
            )
        for a in state.nodes:  # each node reaches the others' pods through them
            for b in state.nodes:
                if a is not b:
                    for cidr, via in zip(b.pod_cidrs, b.addresses, strict=False):
                        topo.route(a.netns, cidr, via)
        log(
            f"lab {self.name}: LAN {' and '.join(cfg.node_lan)}, client {client[0]}, "
            + ", ".join(f"{n.name} {n.addresses[0]}" for n in state.nodes)
        )
        self._reconcile(state, log)
        for node in state.nodes:
            if node.name not in without_xlb:
                node.agent_pid = self._start_agent(node, state)
        self.save(state)
        self._wait_for_agents(state)
        log(
            f"lab {self.name}: {len(state.pods)} pods, agents running on "
            f"{', '.join(n.name for n in state.nodes if n.agent_pid)}"
            + (f"; no xlb on {', '.join(sorted(without_xlb))}" if without_xlb else "")
        )

    @staticmethod
    def _of_families(state: LabState, addresses: list[str]) -> list[str]:
        return [a for a in addresses if ("IPv6" if ":" in a else "IPv4") in state.families]

    def cluster_config(self, state: LabState) -> ClusterConfig:
        return lab_cluster_config(len(state.nodes), state.families)

    # -- apply: the lab's controllers --------------------------------------------------------------

    def apply(self, manifests: list[str] | None = None, log=print) -> LabState:
        state = self.load()
        if manifests:
            state.manifests = [str(Path(m).resolve()) for m in manifests]
        self._reconcile(state, log)
        self.save(state)
        return state

    def _reconcile(self, state: LabState, log) -> None:
        """Pods to match the workloads, the host for hand-written endpoints, the agents'
        view of the cluster, and the client's routes to external addresses."""
        docs, diags = load_documents(state.manifests)
        for d in diags:
            log(str(d))
        nodes = self._node_objects(state)
        wanted: list[Pod] = []
        for doc in docs:
            kind = doc.obj["kind"]
            if kind in WORKLOADS - {"Pod"}:
                more, d = workload_pods(doc.obj, nodes)
                wanted += more
                for x in d:
                    log(str(x))
            elif kind == "Pod" and (p := pod_from(doc.obj)):
                wanted.append(p)
        current = {(p.namespace, p.name): p for p in state.pods}
        fixed = [
            Pod(p.namespace, p.name, p.labels, (), p.node, tuple(p.ips), owner=p.owner)
            for p in state.pods
        ]
        new = [p for p in wanted if (p.namespace, p.name) not in current]
        placed, _ = place_pods(fixed + new, nodes)
        by_key = {(p.namespace, p.name): p for p in wanted}
        for ps in state.pods:  # readiness and deletion are the manifest's to say, any time
            if (w := by_key.get((ps.namespace, ps.name))) is not None:
                ps.ready, ps.terminating, ps.terminal = w.ready, w.terminating, w.terminal
        leaving = [p for p in state.pods if (p.namespace, p.name) not in by_key]
        for p in leaving:
            state.pods.remove(p)
        for p in placed:
            key = (p.namespace, p.name)
            if key in current or key not in by_key:
                continue
            ps = self._create_pod(state, by_key[key], p.node_name, list(p.ips))
            state.pods.append(ps)
            log(f"pod {p.namespace}/{p.name} on {p.node_name} {' '.join(p.ips)}")
        self._ext_host(state, [d for d in docs if d.obj["kind"] in ("Endpoints", "EndpointSlice")])
        for p in state.pods:
            wait_listening(p.netns, p.ports)
        objects = [d.obj for d in docs if d.obj["kind"] not in WORKLOADS | {"Node", "Service"}]
        state.services, refused = admit(
            [d.obj for d in docs if d.obj["kind"] == "Service"],
            state.services,
            self.cluster_config(state),
            time.strftime(STAMP, time.gmtime()),
        )
        for line in refused:
            log(line)
        objects += list(state.services.values())
        if not any(o["kind"] == "IPAddressPool" for o in objects):
            objects.append(lab_pool(objects))  # as a cluster with MetalLB set up would
        self._write_agent_view(state, objects, self._node_patches(state, docs, log))
        self._client_routes(state)
        if leaving:
            # as Kubernetes does: the endpoints go first, the pods once the proxies know
            time.sleep(AGENT_CATCH_UP)
        for p in leaving:
            self._delete_pod(p)
            log(f"pod {p.namespace}/{p.name} deleted")

    def _node_objects(self, state: LabState):
        from ..model.objects import LABEL_ZONE, Node

        return [
            Node(n.name, tuple(n.addresses), {LABEL_ZONE: n.zone}, tuple(n.pod_cidrs))
            for n in state.nodes
        ]

    def _create_pod(self, state: LabState, pod: Pod, node_name: str, ips: list[str]) -> PodState:
        node = next(n for n in state.nodes if n.name == node_name)
        ns = f"{self.prefix}pod-{pod.namespace}-{pod.name}"[:60]
        host_veth = topo.short(self.name, pod.namespace, pod.name)
        topo.add_netns(ns)
        gateways = [str(ipaddress.ip_network(c).network_address + 1) for c in node.pod_cidrs]
        topo.pod_link(node.netns, ns, host_veth, ips, gateways)
        ports = [[c.name, c.port, str(c.protocol)] for c in pod.ports]
        listen = [f"{proto.lower()}/{port}" for _, port, proto in ports]
        pid = spawn(
            ns,
            node.cgroup,
            self.dir / f"pod-{pod.namespace}-{pod.name}.log",
            [
                sys.executable,
                "-m",
                "controlplane.lab.podserver",
                "--pod",
                pod.name,
                "--node",
                node.name,
                *[f"--listen={x}" for x in listen],
            ],
        )
        return PodState(
            pod.name,
            pod.namespace,
            node.name,
            ips,
            dict(pod.labels),
            ports,
            ns,
            host_veth,
            pid,
            pod.owner,
            pod.ready,
            pod.terminating,
            pod.terminal,
        )

    def _delete_pod(self, p: PodState) -> None:
        for pid in topo.pids_in(p.netns) + [p.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        topo.run("ip", "netns", "del", p.netns, check=False)

    def _ext_host(self, state: LabState, docs) -> None:
        """Hand-written endpoints outside every pod CIDR get a host on the LAN that answers
        like a pod, so that selector-less Services can be tried for real."""
        pod_nets = [ipaddress.ip_network(c) for n in state.nodes for c in n.pod_cidrs]
        ips: set[str] = set()
        ports: set[tuple[str, int]] = set()
        for doc in docs:
            obj = doc.obj
            subsets = obj.get("subsets") or []
            addrs = [
                a.get("ip")
                for s in subsets
                if isinstance(s, dict)
                for a in (s.get("addresses") or [])
                if isinstance(a, dict)
            ]
            pts = [p for s in subsets if isinstance(s, dict) for p in (s.get("ports") or [])]
            if obj["kind"] == "EndpointSlice":
                addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
                pts = obj.get("ports") or []
            for a in addrs:
                with contextlib.suppress(ValueError, TypeError):
                    if not any(ipaddress.ip_address(a) in n for n in pod_nets):
                        ips.add(str(ipaddress.ip_address(a)))
            for p in pts:
                if isinstance(p, dict) and isinstance(p.get("port"), int):
                    ports.add(((p.get("protocol") or "TCP").lower(), p["port"]))
        if sorted(ips) == state.ext_ips and sorted(ports) == [tuple(p) for p in state.ext_ports]:
            return
        if state.ext_pid:
            for pid in topo.pids_in(self.ext_ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            topo.run("ip", "netns", "del", self.ext_ns, check=False)
            state.ext_pid = 0
        state.ext_ips, state.ext_ports = sorted(ips), [list(p) for p in sorted(ports)]
        if not ips:
            return
        topo.add_netns(self.ext_ns)
        topo.attach_to_lan(
            self.lan_ns, self.ext_ns, f"{self.name}/ext", self._of_families(state, [EXT4, EXT6])
        )
        for node in state.nodes:  # answers go back to pods through their node
            for cidr, via in zip(node.pod_cidrs, node.addresses, strict=False):
                topo.route(self.ext_ns, cidr, via)
        for a in ips:
            v6 = ":" in a
            topo.ip(self.ext_ns, "addr", "add", f"{a}/{128 if v6 else 32}", "dev", "lo")
            for node in state.nodes:
                topo.route(node.netns, a, EXT6 if v6 else EXT4)
        state.ext_pid = spawn(
            self.ext_ns,
            None,
            self.dir / "ext.log",
            [
                sys.executable,
                "-m",
                "controlplane.lab.podserver",
                "--pod",
                "external-host",
                "--node",
                "-",
                *[f"--listen={proto}/{port}" for proto, port in sorted(ports)],
            ],
        )
        wait_listening(self.ext_ns, [[None, p, proto] for proto, p in sorted(ports)])

    @staticmethod
    def _node_patches(state: LabState, docs, log) -> dict[str, dict]:
        """Node objects in the manifests, by name: what `kubectl label node` or a kubelet's
        condition would change on the lab's node of that name (its labels, its conditions).
        The lab makes its nodes itself, so one it does not have is reported and ignored."""
        ours = {n.name for n in state.nodes}
        patches: dict[str, dict] = {}
        for doc in docs:
            if doc.obj["kind"] != "Node":
                continue
            meta = doc.obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            if name not in ours:
                known = ", ".join(sorted(ours))
                log(f"{doc.origin}: Node {name!r} is not one of the lab's ({known}): ignored")
                continue
            patches[name] = doc.obj
        return patches

    def _write_agent_view(
        self, state: LabState, objects: list[dict], node_patches: dict[str, dict] | None = None
    ) -> None:
        """What the API server would hold, in the files the agents watch."""
        cluster = []
        for n in state.nodes:
            patch = (node_patches or {}).get(n.name, {})
            labels = {"topology.kubernetes.io/zone": n.zone}
            extra = (patch.get("metadata") or {}).get("labels") or {}
            labels |= {str(k): str(v) for k, v in extra.items()}
            addresses = [{"type": "InternalIP", "address": a} for a in n.addresses]
            status: dict = {"addresses": addresses}
            if conditions := (patch.get("status") or {}).get("conditions"):
                status["conditions"] = conditions
            cluster.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n.name, "labels": labels},
                    "spec": {"podCIDRs": n.pod_cidrs},
                    "status": status,
                }
            )
        for p in state.pods:
            cluster.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": p.name,
                        "namespace": p.namespace,
                        "labels": p.labels,
                        # a deletion under way (the lab's stand-in has no grace period)
                        **({"deletionTimestamp": "1970-01-01T00:00:00Z"} if p.terminating else {}),
                    },
                    "spec": {
                        "nodeName": p.node,
                        "containers": [
                            {
                                "name": "server",
                                "ports": [
                                    {"name": name, "containerPort": port, "protocol": proto}
                                    if name
                                    else {"containerPort": port, "protocol": proto}
                                    for name, port, proto in p.ports
                                ],
                            }
                        ],
                    },
                    "status": {
                        "podIPs": [{"ip": a} for a in p.ips],
                        "conditions": [{"type": "Ready", "status": str(p.ready)}],
                        **({"phase": "Failed"} if p.terminal else {}),
                    },
                }
            )
        agent_dir = self.dir / "agent"
        for fname, docs in (("services.yaml", objects), ("cluster.yaml", cluster)):
            tmp = agent_dir / f".{fname}.tmp"
            tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            tmp.replace(agent_dir / fname)  # agents never read a half-written file

    def _client_routes(self, state: LabState) -> None:
        """Routes on the client to externalIPs, and to LoadBalancer IPs outside the LAN, via
        the first node; LoadBalancer IPs on the LAN are announced by their node (ARP/NDP)."""
        cluster = load_cluster([self.dir / "agent"], self.cluster_config(state))
        first = state.nodes[0].addresses
        for svc in cluster.services:
            on_lan = [
                a
                for a in svc.ingress_ips
                if any(ipaddress.ip_address(a) in net for net in (topo.LAN4, topo.LAN6))
            ]
            for a in list(svc.external_ips) + [a for a in svc.ingress_ips if a not in on_lan]:
                via = next((x for x in first if (":" in x) == (":" in a)), None)
                if via:
                    topo.route(self.client_ns, a, via)

    # -- processes ---------------------------------------------------------------------------

    def _start_agent(self, node: NodeState, state: LabState) -> int:
        key = self.dir / f"gossip-{node.name}.key"  # a node's own keyring (a rotation)
        if not key.exists():
            key = self.dir / "gossip.key"
        if not key.exists():
            key.write_text(os.urandom(16).hex())
        if state.families != list(FAMILIES):
            ranges = ",".join(self.cluster_config(state).service_cidrs)
            more = [f"--service-cluster-ip-range={ranges}"]
        else:
            more = []
        args = [
            "agent",
            "-f",
            str(self.dir / "agent"),
            "--node",
            node.name,
            "--uplink",
            "eth0",
            "--cgroup",
            node.cgroup,
            "--pin-root",
            node.pin_root,
            "--ct-size",
            "65536",
            "--bind-address",
            node.addresses[0],
            "--gossip-key-file",
            str(key),
            *[f"--node-ip={a}" for a in node.addresses],
            *more,
            *state.agent_args,
        ]
        return spawn(
            node.netns,
            None,
            self.dir / f"agent-{node.name}.log",
            [sys.executable, "-m", "controlplane.cli", *args],
        )

    def restart_agent(
        self,
        node_name: str,
        gossip_keys: list[str] | None = None,
        graceful: bool = False,
        timeout: float = 10.0,
    ) -> int:
        """Kills the node's agent (SIGKILL, a crash; graceful: SIGTERM and waits for it to
        exit, as a rolling update does) and starts a new one, with this keyring if given
        (one key a line, the first signs): the node keeps it across later restarts."""
        state = self.load()
        node = next(n for n in state.nodes if n.name == node_name)
        if node.agent_pid:  # (a node without xlb gets its first agent)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.agent_pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while graceful and alive(node.agent_pid):
            if time.monotonic() > deadline:
                raise LabError(f"xlb lab: the agent on {node_name} ignored SIGTERM")
            time.sleep(0.02)
        if gossip_keys is not None:
            (self.dir / f"gossip-{node.name}.key").write_text("\n".join(gossip_keys) + "\n")
        node.agent_pid = self._start_agent(node, state)
        self.save(state)
        return node.agent_pid

    def _wait_for_agents(self, state: LabState, timeout: float = 60) -> None:
        """Until every agent's record (runstate, what `xlb status` reads) says it is ready:
        synced, and past the gossip's settle, so that LoadBalancer IPs are answered."""
        deadline = time.monotonic() + timeout
        for node in state.nodes:
            while node.agent_pid:  # (0: a node without xlb)
                record = runstate.read(node.pin_root) or {}
                if record.get("pid") == node.agent_pid and record.get("ready"):
                    break
                if time.monotonic() > deadline or not alive(node.agent_pid):
                    log_path = self.dir / f"agent-{node.name}.log"
                    tail = log_path.read_text()[-2000:] if log_path.exists() else ""
                    raise LabError(f"xlb lab: the agent on {node.name} did not sync:\n{tail}")
                time.sleep(0.1)

    # -- exec, status, down -------------------------------------------------------------------

    def target(self, name: str) -> tuple[str, str | None]:
        """The namespace and cgroup a command for target name runs in."""
        state = self.load()
        if name == "client":
            return self.client_ns, None
        if name in ("ext", "external-host") and state.ext_pid:
            return self.ext_ns, None
        for n in state.nodes:
            if n.name == name:
                return n.netns, n.cgroup
        for p in state.pods:
            if name in (p.name, f"{p.namespace}/{p.name}"):
                node = next(n for n in state.nodes if n.name == p.node)
                return p.netns, node.cgroup
        choices = ["client"] + [n.name for n in state.nodes] + [p.name for p in state.pods]
        raise LabError(f"xlb lab: no target {name!r}; try one of: {', '.join(choices)}")

    def exec(self, name: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        ns, cgroup = self.target(name)
        join = functools.partial(join_cgroup, cgroup)
        return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], preexec_fn=join, **kw)

    def down(self, quiet: bool = False) -> list[str]:
        """Removes everything the lab made, found by name, so it works after a crash too."""
        removed = []
        for ns in topo.netns_list(self.prefix):
            for pid in topo.pids_in(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(LabError):
            for p in self.load().pods:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        for ns in topo.netns_list(self.prefix):
            topo.run("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
        base = None
        with contextlib.suppress(Exception):
            base = self.cgroup_base()
        if base and os.path.isdir(base):
            for sub in sorted(Path(base).glob("*"), reverse=True):
                if sub.is_dir():
                    rmdir_cgroup(sub)
            rmdir_cgroup(Path(base))
            removed.append(f"cgroup {base}")
        if os.path.isdir(self.pin_base):
            # the killed agents' `xlb status` records go with their pins
            for root in Path(self.pin_base).iterdir():
                runstate.remove(str(root))
            shutil.rmtree(self.pin_base, ignore_errors=True)
            removed.append(f"pins {self.pin_base}")
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            removed.append(f"state {self.dir}")
        if not quiet:
            print(f"lab {self.name}: removed " + (", ".join(removed) or "nothing (not up)"))
        return removed
