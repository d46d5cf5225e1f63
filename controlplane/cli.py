"""The `xlb` command."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .model import Level, TranslateConfig, translate
from .model.state import Algorithm, DesiredState, Frontend
from .model.translate import with_address_space
from .sources.cluster import ClusterConfig
from .sources.manifests import load_cluster


def _backend_text(fe: Frontend) -> list[str]:
    lines = []
    for b in fe.backends:
        flags = [x for x, on in (("local", b.local), ("terminating", b.terminating)) if on]
        lines.append(
            f"  -> {b.name:<24} {b.node_name or '-':<10} {b.target or '-':<34} "
            f"{','.join(flags)}".rstrip()
        )
    for b in fe.draining:
        why = "terminating" if b.terminating else "not ready"
        lines.append(
            f"  -> {b.name:<24} {b.node_name or '-':<10} {b.target or '-':<34} "
            f"draining, {why} (existing flows only)"
        )
    if not fe.backends:
        lines.append(f"  (no backend: {fe.no_backend})")
    return lines


def _same_backends(a: Frontend, b: Frontend) -> bool:
    return (a.backends, a.draining, a.no_backend) == (b.backends, b.draining, b.no_backend)


def render_model(state: DesiredState, node_name: str) -> str:
    """ipvsadm -Ln style: one block per frontend, grouped by Service, then the diagnostics.
    An address served alike to outside and inside traffic is shown once, scope "both"."""
    out = [f"Frontends programmed on node {node_name or '(none)'}: {len(state.frontends)}"]
    current = None
    frontends = list(state.frontends)
    for i, fe in enumerate(frontends):
        if fe is None:
            continue
        if fe.service != current:
            current = fe.service
            out += ["", f"Service {fe.service}"]
        scope, algo = str(fe.scope), str(fe.algorithm)
        twin = frontends[i + 1] if i + 1 < len(frontends) else None
        if (
            twin is not None
            and twin.address == fe.address
            and twin.port == fe.port
            and twin.protocol == fe.protocol
            and twin.scope != fe.scope
            and _same_backends(fe, twin)
        ):
            frontends[i + 1] = None
            scope = "both"
            algo = algo if twin.algorithm == fe.algorithm else f"{algo}/{twin.algorithm}"
        extra = []
        if fe.affinity_timeout:
            extra.append(f"affinity=ClientIP/{fe.affinity_timeout}s")
        if fe.preserve_client_ip:
            extra.append("policy=Local")
        if fe.source_ranges:
            extra.append("sources=" + ",".join(fe.source_ranges))
        out.append(
            f"{fe.protocol:<4} {fe.endpoint:<30} {fe.kind:<12} {scope:<8} "
            f"{algo:<14} port={fe.port_name or '-'} {' '.join(extra)}".rstrip()
        )
        out += _backend_text(fe)
    if state.health_checks:
        out += ["", "Health check node ports"]
        for hc in state.health_checks:
            out.append(f"  :{hc.port:<6} {hc.service:<40} localEndpoints={hc.local_endpoints}")
    if state.diagnostics:
        out += ["", "Diagnostics"]
        out += [f"  {d}" for d in state.diagnostics]
    return "\n".join(out)


def _model_json(state: DesiredState, node_name: str) -> dict:
    def backend(b):
        return {
            "address": b.address,
            "port": b.port,
            "node": b.node_name,
            "local": b.local,
            "terminating": b.terminating,
            "ready": b.ready,
            "serving": b.serving,
            "target": b.target,
        }

    return {
        "node": node_name,
        "frontends": [
            {
                "service": f.service,
                "portName": f.port_name,
                "kind": str(f.kind),
                "scope": str(f.scope),
                "address": f.address,
                "port": f.port,
                "protocol": str(f.protocol),
                "algorithm": str(f.algorithm),
                "affinityTimeout": f.affinity_timeout,
                "noBackend": str(f.no_backend),
                "preserveClientIP": f.preserve_client_ip,
                "sourceRanges": list(f.source_ranges),
                "backends": [backend(b) for b in f.backends],
                "draining": [backend(b) for b in f.draining],
            }
            for f in state.frontends
        ],
        "healthChecks": [
            {"service": h.service, "port": h.port, "localEndpoints": h.local_endpoints}
            for h in state.health_checks
        ],
        "diagnostics": [d.as_dict() for d in state.diagnostics],
    }


def cmd_model(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.filename, ClusterConfig(nodes=args.nodes))
    nodes = {n.name: n for n in cluster.nodes}
    node_name = args.node or (cluster.nodes[0].name if cluster.nodes else "")
    if node_name not in nodes:
        print(
            f"xlb model: no node {node_name!r}; nodes: {', '.join(nodes) or 'none'}",
            file=sys.stderr,
        )
        return 2
    cfg = TranslateConfig(
        external_algorithm=Algorithm(args.external_algorithm),
        internal_algorithm=Algorithm(args.internal_algorithm),
        node_addresses=frozenset(a for n in cluster.nodes for a in n.addresses),
    )
    state = translate(cluster.services, cluster.slices, nodes[node_name], cfg)
    state = DesiredState(
        state.frontends, state.health_checks, tuple(cluster.diagnostics) + state.diagnostics
    )
    if args.json:
        print(json.dumps(_model_json(state, node_name), indent=2))
    else:
        print(render_model(state, node_name))
    errors = sum(1 for d in state.diagnostics if d.level is Level.ERROR)
    return 1 if (errors and args.strict) else 0


def _node_of(args: argparse.Namespace):
    """The cluster in the manifests and this node."""
    cluster = load_cluster(args.filename, ClusterConfig(nodes=args.nodes))
    nodes = {n.name: n for n in cluster.nodes}
    name = args.node or (cluster.nodes[0].name if cluster.nodes else "")
    if name not in nodes:
        raise SystemExit(f"xlb: no node {name!r}; nodes: {', '.join(nodes) or 'none'}")
    return cluster, nodes[name]


def _datapath_config(args: argparse.Namespace):
    from .datapath.config import DatapathConfig, hash_seed_of
    from .datapath.conntrack import Timeouts

    given = {
        name: getattr(args, f"conntrack_{name}")
        for name in CONNTRACK_FLAGS
        if getattr(args, f"conntrack_{name}", None) is not None
    }
    seed = getattr(args, "hash_seed", None)
    return DatapathConfig(
        pin_root=args.pin_root,
        max_rings=args.max_rings,
        ring_size=args.ring_size,
        ct_size=args.ct_size,
        ct_timeouts=Timeouts(**given),
        hash_seed=hash_seed_of(seed) if seed else 0,
    )


# Timeouts.<name> -> (flag, what it is): kube-proxy's flag names where it has one
CONNTRACK_FLAGS = {
    "tcp_est": ("--conntrack-tcp-timeout-established", "an idle established TCP flow"),
    "tcp_close_wait": ("--conntrack-tcp-timeout-close-wait", "a half-closed TCP flow (one FIN)"),
    "tcp_new": ("--conntrack-tcp-timeout-syn", "a SYN the backend has not answered"),
    "tcp_close": ("--conntrack-tcp-timeout-close", "a closed flow (a FIN each way, or a RST) "
                  "before its tuple, a SNAT port, is free"),
    "udp": ("--conntrack-udp-timeout", "a UDP flow with no reply yet"),
    "udp_stream": ("--conntrack-udp-timeout-stream", "an idle UDP flow that had replies"),
}  # fmt: skip


def duration(value: str) -> int:
    """A Go duration as kube-proxy's flags take it (24h0m0s, 90s, 1h30m, 2m) -> whole seconds
    (rounded up); a bare number is seconds."""
    import re

    text = value.strip()
    if re.fullmatch(r"\d+", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"{value!r} is not a duration (e.g. 24h0m0s, 90s)")
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        seconds = sum(float(n) * unit[u] for n, u in parts)
    whole = int(-(-seconds // 1))
    if not 1 <= whole <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{value!r}: between 1s and 136 years")
    return whole


def cmd_datapath_up(args: argparse.Namespace) -> int:
    from .datapath.attach import cgroup2_root
    from .datapath.devices import interfaces, local_addresses
    from .datapath.node import NodeDatapath, ensure_sysctls
    from .datapath.programs import BPF_DIR, expand

    cluster, node = _node_of(args)
    cfg = _datapath_config(args)
    if args.ebpf:
        for source in ("xdp_lb.c", "tc_lb.c", "sock_lb.c"):
            print(f"// cflags: {' '.join(cfg.cflags())}")
            print(expand(BPF_DIR / source))
        return 0
    addrs = args.node_ip or list(node.addresses)
    addr4 = next((a for a in addrs if ":" not in a), "0.0.0.0")
    addr6 = next((a for a in addrs if ":" in a), "::")
    uplink, devices = resolve_devices(args.uplink, args.devices, list(addrs))
    # NodePorts answer on the served devices' addresses too, as the agent's do
    where = local_addresses(interfaces())
    extra = tuple(a for a, dev in sorted(where.items()) if dev in devices and a not in addrs)
    translate_cfg = TranslateConfig(
        node_addresses=frozenset(a for n in cluster.nodes for a in n.addresses)
    )
    state = translate(
        cluster.services,
        cluster.slices,
        dataclasses.replace(node, addresses=node.addresses + extra),
        translate_cfg,
    )
    state = with_address_space(state, cluster.services, cluster.service_cidrs, translate_cfg)
    for d in list(cluster.diagnostics) + list(state.diagnostics):
        if d.level is not Level.INFO:
            print(d, file=sys.stderr)
    for line in ensure_sysctls(cfg.snat_ports):
        print(f"xlb: {line}")
    cgroup = args.cgroup or cgroup2_root()
    dp = NodeDatapath.load(cfg, uplink, cgroup, native=not args.generic_xdp, devices=devices)
    res = dp.apply(state, addr4, addr6)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    mib = sum(cfg.memory(os.cpu_count() or 1).values()) / 2**20
    print(
        f"xlb: node {node.name}: {len(state.frontends)} frontends on {', '.join(devices)} "
        f"(XDP, tc) and cgroup {cgroup}; {res.writes} writes, {res.deletes} deletes, "
        f"{res.ring_writes} Maglev rings in {res.seconds * 1000:.1f} ms; maps under "
        f"{cfg.pin_root} reserve about {mib:.0f} MiB"
    )
    return 0


def cmd_datapath_down(args: argparse.Namespace) -> int:
    from .datapath.attach import cgroup2_root
    from .datapath.node import unload

    devices = [d for d in (args.uplink or "").split(",") if d]
    unload(devices, args.cgroup or cgroup2_root(), args.pin_root)
    print(f"xlb: detached from {', '.join(devices) or '(no uplink)'} and removed {args.pin_root}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import logging

    from .agent import ManifestSource, run_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    node = args.node or os.environ.get("NODE_NAME", "")
    if not node:
        raise SystemExit(
            "xlb agent: give --node, or set NODE_NAME (the DaemonSet does, from spec.nodeName)"
        )
    if args.source == "kubernetes":
        from .sources.kubernetes import KubernetesSource, api_client

        client = api_client(args.kubeconfig)
        source = KubernetesSource(
            client,
            endpoints_api=args.endpoints_api,
            proxy_name=args.proxy_name,
            pools=_pools(args.pool or []),
        )
        if not args.hash_seed:
            args.hash_seed = _cluster_identity(client)
    else:
        if not args.filename:
            raise SystemExit("xlb agent: --source manifests needs -f FILE|DIR")
        cluster_cfg = ClusterConfig(pools=tuple(_pools(args.pool or [])))
        if args.service_cluster_ip_range:
            cluster_cfg = dataclasses.replace(
                cluster_cfg, service_cidrs=_cidrs(args.service_cluster_ip_range)
            )
        source = ManifestSource(args.filename, cluster_cfg)
    return run_agent(agent_config(args, node), source, _datapath_config(args))


def agent_config(args: argparse.Namespace, node: str):
    """The agent's settings from its command line (every flag lands here)."""
    from .agent import AgentConfig
    from .datapath.attach import cgroup2_root

    node_ips = [a for a in args.node_ip or [] if a]  # the DaemonSet's --node-ip=$(NODE_IP)
    uplink, devices = resolve_devices(args.uplink, args.devices, node_ips)
    return AgentConfig(
        node=node,
        uplink=uplink,
        devices=devices,
        # only the loader uses it: a preloaded agent may run where no cgroup v2 is mounted
        cgroup=args.cgroup or ("" if args.preloaded else cgroup2_root()),
        pin_root=args.pin_root,
        node_ips=node_ips,
        poll_interval=args.poll_interval,
        min_interval=args.min_sync_interval,
        native_xdp=not args.generic_xdp,
        preloaded=args.preloaded,
        bind_address=args.bind_address,
        metrics_bind_address=args.metrics_bind_address,
        healthz_port=args.healthz_port,
        metrics_port=args.metrics_port,
        health_timeout=args.health_timeout,
        gossip_key=_gossip_key(args.gossip_key_file),
        gossip_port=args.gossip_port,
        l2_refresh=args.l2_refresh_interval,
        l2_placement=args.l2_placement,
        peers=_peers(args.peer or [], args.gossip_port),
        lb_allocator=not args.no_lb_allocator,
        lb_class=args.lb_class,
        unallocated_cluster_ips=args.unallocated_cluster_ips,
        translate=TranslateConfig(
            external_algorithm=Algorithm(args.external_algorithm),
            internal_algorithm=Algorithm(args.internal_algorithm),
            proxy_name=args.proxy_name,
            nodeport_cidrs=_nodeport_addresses(args.nodeport_addresses or []),
            external_ips=_external_ips(args.external_ips),
        ),
    )


def _cluster_identity(client) -> str | None:
    """The kube-system namespace's uid: the same for every node, made when the cluster was,
    unknown outside it; the default seed of the hashes (None, with a warning, if unreadable)."""
    import logging

    from kubernetes import client as k8s

    try:
        return str(k8s.CoreV1Api(client).read_namespace("kube-system").metadata.uid)
    except Exception as exc:  # noqa: BLE001 (RBAC, an old server: the public default)
        logging.getLogger("xlb.agent").warning(
            "cannot read namespace kube-system (%s): the flow hashes use the public default "
            "seed; give --hash-seed", getattr(exc, "reason", exc),
        )  # fmt: skip
        return None


def _cidrs(value: str) -> tuple[str, ...]:
    """--service-cluster-ip-range: comma-separated CIDRs, each checked."""
    out = []
    for w in (w.strip() for w in value.split(",")):
        try:
            out.append(str(ipaddress.ip_network(w)))
        except ValueError:
            raise SystemExit(
                f"xlb agent: --service-cluster-ip-range {value!r}: {w!r} is not a CIDR "
                "(e.g. 10.96.0.0/12,fd00:10:96::/112)"
            ) from None
    return tuple(out)


def _external_ips(value: str) -> tuple[str, ...]:
    """--external-ips: allow, deny, or CIDRs (comma-separated) that externalIPs must be in."""
    words = tuple(w.strip() for w in value.split(",") if w.strip())
    if words in (("allow",), ("deny",)):
        return words
    for w in words:
        try:
            ipaddress.ip_network(w, strict=False)
        except ValueError:
            raise SystemExit(
                f"xlb agent: --external-ips {value!r}: write allow, deny, or CIDRs "
                "(e.g. 203.0.113.0/24,2001:db8::/64)"
            ) from None
    return words or ("allow",)


def _nodeport_addresses(entries: list[str]) -> tuple[str, ...]:
    """--nodeport-addresses as kube-proxy takes it: CIDRs and `primary`, comma-separated or
    repeated."""
    from .model.translate import NODEPORT_PRIMARY

    out = []
    for entry in (e.strip() for x in entries for e in x.split(",")):
        if not entry:
            continue
        if entry != NODEPORT_PRIMARY:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SystemExit(
                    f"xlb agent: --nodeport-addresses {entry!r}: write CIDRs (e.g. "
                    f"192.168.1.0/24,fd00::/64) or {NODEPORT_PRIMARY}"
                ) from None
        out.append(entry)
    return tuple(out)


def resolve_devices(
    uplink: str | None, devices: list[str] | None, node_ips: list[str]
) -> tuple[str, list[str]]:
    """--uplink and --devices -> (uplink, devices served). The uplink (where LoadBalancer IPs
    are announced; auto: the interface of the node's address, else the default route's) is
    always served; --devices adds names, globs or auto."""
    from .datapath.attach import default_uplink
    from .datapath.devices import choose, interfaces

    found = interfaces()
    try:
        served = choose(devices or [], node_ips, found)
    except ValueError as exc:
        raise SystemExit(f"xlb: {exc}") from None
    if not uplink or uplink == "auto":
        uplink = default_uplink(node_ips)
    if uplink not in served:
        served.insert(0, uplink)
    return uplink, served


def _peers(entries: list[str], port: int) -> dict[str, tuple[str, int]]:
    """--peer NAME=ADDRESS[:PORT] entries: the members from the config, not from Nodes."""
    out = {}
    for entry in entries:
        name, sep, where = entry.partition("=")
        host, p = where, ""
        if where.startswith("["):  # [IPv6]:PORT
            host, _, p = where[1:].partition("]")
            p = p.removeprefix(":")
        elif where.count(":") == 1:  # IPv4:PORT
            host, p = where.split(":")
        try:
            ipaddress.ip_address(host)
            out[name] = (host, int(p) if p else port)
        except ValueError:
            raise SystemExit(
                f"xlb agent: --peer {entry!r}: write NAME=ADDRESS[:PORT], "
                "e.g. node-2=192.168.1.12 or node-2=192.168.1.12:7947"
            ) from None
        if not sep or not name:
            raise SystemExit(f"xlb agent: --peer {entry!r}: the node name is missing (NAME=...)")
    return out


def _pools(entries: list[str]) -> list:
    from .l2.ipam import config_pool

    try:  # each flag may hold several pools, `;`-separated (one ConfigMap value); "" none
        return [config_pool(e) for x in entries for e in x.split(";") if e.strip()]
    except ValueError as exc:
        raise SystemExit(f"xlb agent: --pool {exc}") from None


def _gossip_key(path: str | None) -> bytes:
    """The cluster's shared gossip key, from a file or XLB_GOSSIP_KEY; empty: no L2. A file
    that is not there is no key (the DaemonSet mounts an optional Secret), said once."""
    if path:
        try:
            return Path(path).read_bytes().strip()
        except FileNotFoundError:
            print(
                f"xlb agent: no gossip key at {path}: not gossiping, not announcing "
                "LoadBalancer IPs (create Secret kube-system/xlb-gossip to turn them on)",
                file=sys.stderr,
            )
            return b""
    return os.environ.get("XLB_GOSSIP_KEY", "").encode()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "services"


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab.lab import Lab

    lab = Lab(args.name)
    if args.action == "up":
        families = ["IPv4", "IPv6"] if args.ip_family == "dual" else [args.ip_family]
        state = lab.up(args.filename or [str(EXAMPLES)], nodes=args.nodes, families=families)
        first = state.nodes[0].addresses[0]
        host = f"[{first}]" if ":" in first else first
        print(
            f"try: xlb lab exec --name {args.name} client -- curl -s http://{host}:"
            "<nodePort>/   (xlb lab status shows the Services)"
        )
        return 0
    if args.action == "down":
        lab.down()
        return 0
    if args.action == "apply":
        lab.apply(args.filename)
        return 0
    if args.action == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise SystemExit("xlb lab exec: give a command after --")
        return lab.exec(args.target, cmd).returncode
    return lab_status(lab)


def cmd_demo(args: argparse.Namespace) -> int:
    from .lab.demo import demo

    return demo(
        args.filename or [str(EXAMPLES)],
        name=args.name,
        check=args.check,
        keep=args.keep,
        nodes=args.nodes,
    )


def lab_status(lab) -> int:
    from .datapath.maps import Maps
    from .datapath.status import collect, render
    from .lab.lab import _alive

    state = lab.load()
    print(f"lab {state.name}: manifests {', '.join(state.manifests)}")
    print(f"\n{'NODE':<10} {'ADDRESSES':<34} AGENT")
    for n in state.nodes:
        agent = f"running (pid {n.agent_pid})" if _alive(n.agent_pid) else "NOT RUNNING"
        print(f"{n.name:<10} {' '.join(n.addresses):<34} {agent}")
    print(f"\n{'POD':<44} {'NODE':<10} IPS")
    for p in state.pods:
        print(f"{p.namespace + '/' + p.name:<44} {p.node:<10} {' '.join(p.ips)}")
    if state.ext_ips:
        print(f"{'(host for hand-written endpoints)':<44} {'-':<10} {' '.join(state.ext_ips)}")
    for n in state.nodes:
        print(f"\n== programmed on {n.name} ==")
        print(render(collect(Maps.open(n.pin_root))))
    return 0


def cmd_prepare_node(args: argparse.Namespace) -> int:
    """What the DaemonSet's privileged init container does, once per start: bpffs, the
    sysctls, kube-proxy's leftovers if asked, and (with --uplink) the programs compiled and
    attached, so that the agent needs neither CAP_SYS_ADMIN nor the compiler."""
    from .datapath import loader
    from .datapath.attach import cgroup2_root
    from .datapath.node import ensure_sysctls
    from .datapath.programs import ensure_bpffs

    cfg = _datapath_config(args)
    ensure_bpffs(args.pin_root)
    for line in ensure_sysctls(cfg.snat_ports):
        print(f"xlb: {line}")
    cleanup = os.environ.get("XLB_CLEANUP_KUBE_PROXY", "").lower() in ("1", "true", "yes")
    if cleanup and cmd_cleanup(args):
        return 1
    if args.uplink or args.devices:
        node_ips = [a for a in args.node_ip or [] if a]
        _, devices = resolve_devices(args.uplink, args.devices, node_ips)
        cgroup = args.cgroup or cgroup2_root()
        loader.load(cfg, devices, cgroup, native=not args.generic_xdp)
        print(f"xlb: programs attached to {', '.join(devices)} (XDP, tc) and cgroup {cgroup}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .cleanup import cleanup_kube_proxy

    report = cleanup_kube_proxy()
    for item in report.removed:
        print(f"removed {item}")
    for problem in report.problems:
        print(f"xlb cleanup-kube-proxy: {problem}", file=sys.stderr)
    if not report.removed and not report.problems:
        print("nothing of kube-proxy's found on this node")
    return 1 if report.problems else 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs a benchmark from bench/ (in a checkout: bench/ is not part of the package)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if not (bench / f"{args.what}.py").exists():
        raise SystemExit(f"xlb bench: no bench/{args.what}.py here; run it from a checkout")
    sys.path.insert(0, str(bench.parent))
    module = __import__(f"bench.{args.what}", fromlist=["main"])
    return module.main(args.rest)


def cmd_status(args: argparse.Namespace) -> int:
    from .datapath.maps import Maps
    from .datapath.status import collect, render

    status = collect(Maps.open(args.pin_root), rate_interval=args.rate_interval)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Drop and reject events as the kernel reports them, until interrupted (or --count)."""
    from .datapath.events import EventRing
    from .datapath.maps import Maps

    frontends = {}
    try:
        for (address, port, proto, scope), v in Maps.open(args.pin_root).read_services().items():
            host = f"[{address}]" if ":" in address else address
            frontends[v.id] = f"{host}:{port}/{proto} ({scope})"
    except OSError:
        pass  # events still say their frontend's id
    seen = 0
    try:
        ring = EventRing(args.pin_root)
    except OSError as exc:
        print(f"xlb monitor: {exc}", file=sys.stderr)
        return 1
    with ring:
        try:
            for event in ring.follow():
                if args.reason and event.reason not in args.reason:
                    continue
                print(json.dumps(event.as_json()) if args.json else event.line(frontends),
                      flush=True)  # fmt: skip
                seen += 1
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _datapath_sizes(parser: argparse.ArgumentParser) -> None:
    """The map sizes a node's datapath is compiled with (the loader passes them to the C)."""
    parser.add_argument(
        "--max-rings",
        type=int,
        default=64,
        help="Maglev rings: backend groups using Maglev at once (default 64)",
    )
    parser.add_argument("--ring-size", type=int, default=16381, help="Maglev M, prime")
    parser.add_argument("--ct-size", type=int, default=262144, help="conntrack entries")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlb", description="eBPF/XDP Service load balancer: a kube-proxy replacement."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    model = sub.add_parser(
        "model",
        help="print what would be programmed for these manifests (no kernel needed)",
        description="Read kubectl-style manifests and print every frontend, its backends and "
        "policy, and every problem found, as a node would program them.",
    )
    model.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="manifest file or directory (repeatable)",
    )
    model.add_argument("--node", help="the node to translate for (default: the first node)")
    model.add_argument(
        "--nodes",
        type=int,
        default=2,
        help="nodes to synthesise when the manifests hold no Node (default 2)",
    )
    algos = [a.value for a in Algorithm]
    model.add_argument("--external-algorithm", choices=algos, default="maglev")
    model.add_argument("--internal-algorithm", choices=algos, default="random")
    model.add_argument("--json", action="store_true", help="machine-readable output")
    model.add_argument(
        "--strict", action="store_true", help="exit 1 when any diagnostic is an error"
    )
    model.set_defaults(func=cmd_model)

    dp = sub.add_parser(
        "datapath", help="load, attach and program the BPF datapath once (up), or remove it (down)"
    )
    dp_sub = dp.add_subparsers(dest="action", metavar="ACTION")
    dp_sub.required = True
    up = dp_sub.add_parser(
        "up",
        help="compile, attach and sync from manifests, then exit; "
        "the programs and pinned maps stay",
    )
    up.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR")
    up.add_argument("--node", help="this node's name (default: the first node)")
    up.add_argument("--nodes", type=int, default=2, help="nodes to synthesise (default 2)")
    up.add_argument(
        "--node-ip", action="append", help="this node's address for SNAT (default: from its Node)"
    )
    up.add_argument(
        "--uplink",
        default="auto",
        help="the node's interface to the LAN, where LoadBalancer IPs are announced "
        "(auto: the one holding the node's address, else the default route's)",
    )
    up.add_argument(
        "--devices",
        action="append",
        metavar="IF|GLOB|auto",
        help="interfaces to serve beside the uplink, repeatable or comma-separated: names, "
        "globs (eth*), or auto (every up interface holding a node address or a default route)",
    )
    up.add_argument(
        "--cgroup", help="cgroup v2 directory for the socket hooks (default: the cgroup v2 root)"
    )
    up.add_argument(
        "--generic-xdp",
        action="store_true",
        help="attach XDP in generic (skb) mode, for drivers without native XDP",
    )
    up.add_argument(
        "--ebpf",
        action="store_true",
        help="print the C the programs are compiled from, with flags, and exit",
    )
    down = dp_sub.add_parser("down", help="detach everything xlb attached and remove its pins")
    down.add_argument("--uplink", help="the interfaces to detach from (comma-separated)")
    down.add_argument("--cgroup")
    for p in (up, down):
        p.add_argument("--pin-root", default="/sys/fs/bpf/xlb")
    _datapath_sizes(up)
    up.set_defaults(func=cmd_datapath_up)
    down.set_defaults(func=cmd_datapath_down)

    lab = sub.add_parser(
        "lab",
        help="a multi-node cluster in network namespaces on this "
        "machine: up, apply, exec, status, down",
    )
    lab_sub = lab.add_subparsers(dest="action", metavar="ACTION")
    lab_sub.required = True
    lab_up = lab_sub.add_parser("up", help="build the lab and start one agent per node")
    lab_up.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE|DIR",
        help="manifests (default: the shipped examples)",
    )
    lab_up.add_argument("--nodes", type=int, default=2)
    lab_up.add_argument(
        "--ip-family",
        choices=["dual", "IPv4", "IPv6"],
        default="dual",
        help="the lab's address families: dual-stack (default), IPv4-only or IPv6-only "
        "(nodes, pods, Services and client)",
    )
    lab_apply = lab_sub.add_parser(
        "apply", help="change the manifests live (scale, delete a pod, edit a Service)"
    )
    lab_apply.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE|DIR",
        help="new manifests (default: the ones given to up, re-read)",
    )
    lab_exec = lab_sub.add_parser("exec", help="run a command in the client, a node or a pod")
    lab_exec.add_argument("target", help="client, a node name, or a pod name")
    lab_exec.add_argument("cmd", nargs=argparse.REMAINDER)
    lab_sub.add_parser("status", help="nodes, pods and what each agent programmed")
    lab_sub.add_parser("down", help="remove everything the lab made (also after a crash)")
    for p in lab_sub.choices.values():
        p.add_argument("--name", default="lab", help="the lab's name (default lab)")
    lab.set_defaults(func=cmd_lab)

    bench = sub.add_parser(
        "bench",
        help="measure: dataplane (packet rates against kube-proxy's iptables and nftables modes)",
    )
    bench.add_argument("what", choices=["dataplane", "eastwest", "controlplane", "failover", "ci"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    prep = sub.add_parser(
        "prepare-node",
        help="mount bpffs, set the sysctls xlb needs and, "
        "with XLB_CLEANUP_KUBE_PROXY=true, remove kube-proxy's rules",
    )
    prep.add_argument("--pin-root", default="/sys/fs/bpf/xlb")
    prep.add_argument(
        "--uplink",
        help="also compile and attach the programs here (auto: as the agent's --uplink), "
        "for an agent started with --preloaded",
    )
    prep.add_argument(
        "--devices",
        action="append",
        metavar="IF|GLOB|auto",
        help="interfaces to serve beside the uplink, repeatable or comma-separated: names, "
        "globs (eth*), or auto (every up interface holding a node address or a default route)",
    )
    prep.add_argument("--node-ip", action="append", help="for --uplink auto")
    prep.add_argument("--cgroup", help="for the socket hooks (default: the cgroup v2 root)")
    prep.add_argument("--generic-xdp", action="store_true")
    _datapath_sizes(prep)
    prep.set_defaults(func=cmd_prepare_node)

    clean = sub.add_parser(
        "cleanup-kube-proxy",
        help="remove kube-proxy's iptables, nftables and IPVS state, keeping every other rule",
    )
    clean.set_defaults(func=cmd_cleanup)

    dem = sub.add_parser(
        "demo",
        help="build a lab with the examples and tour it: ClusterIP, "
        "NodePort, LoadBalancer, affinity, traffic policy, no endpoints",
    )
    dem.add_argument("-f", "--filename", action="append", metavar="FILE|DIR")
    dem.add_argument("--name", default="demo")
    dem.add_argument("--nodes", type=int, default=2)
    dem.add_argument("--check", action="store_true", help="exit 1 if any answer is wrong")
    dem.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    dem.set_defaults(func=cmd_demo)

    agent = sub.add_parser(
        "agent",
        help="run on a node: keep the datapath in sync with the Kubernetes API or manifests",
    )
    agent.add_argument("--source", choices=["manifests", "kubernetes"], default="manifests")
    agent.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE|DIR",
        help="manifests to watch (--source manifests)",
    )
    agent.add_argument(
        "--kubeconfig",
        help="(--source kubernetes) default: in-cluster, then KUBECONFIG or ~/.kube/config",
    )
    agent.add_argument(
        "--endpoints-api", choices=["endpointslices", "endpoints"], default="endpointslices"
    )
    agent.add_argument(
        "--proxy-name",
        default="",
        help="serve Services labelled service.kubernetes.io/service-proxy-name "
        "with this value (default: only unlabelled ones)",
    )
    agent.add_argument("--node", help="this node's name (default: $NODE_NAME)")
    agent.add_argument(
        "--gossip-key-file",
        help="file with the agents' shared gossip key (or XLB_GOSSIP_KEY); with it, this "
        "node gossips and announces LoadBalancer IPs; a missing file: neither. One key a "
        "line: the first signs, any verifies (to rotate without a split)",
    )
    agent.add_argument(
        "--gossip-port", type=int, default=7947, help="UDP; not 7946, which MetalLB speakers use"
    )
    agent.add_argument(
        "--l2-refresh-interval",
        type=lambda v: 0 if v.strip() in ("0", "0s") else duration(v),
        default=240,
        metavar="DURATION",
        help="announce each LoadBalancer IP this node holds again this often (gratuitous ARP, "
        "unsolicited NA), a little under switches' FDB ageing (300 s commonly); 0: never",
    )
    agent.add_argument(
        "--l2-placement",
        choices=("ordered", "balanced"),
        default="ordered",
        help="which node announces each LoadBalancer IP: ordered is MetalLB's (the first live "
        "node of the IP's hash order); balanced holds each node to ceil(IPs / nodes) and moves "
        "only a leaving node's IPs (a pool can ask for it alone: annotation "
        "xlb.io/l2-placement: balanced). The same on every node",
    )
    agent.add_argument(
        "--peer",
        action="append",
        metavar="NAME=ADDRESS[:PORT]",
        help="a member of the gossip, repeated for each node (default: every Node object)",
    )
    agent.add_argument(
        "--pool",
        action="append",
        metavar="NAME=RANGE[,RANGE][;NAME=...]",
        help="LoadBalancer address pools (CIDR or first-last), beside any MetalLB "
        "IPAddressPool objects; e.g. lan=192.168.1.240/28",
    )
    agent.add_argument(
        "--service-cluster-ip-range",
        metavar="CIDR[,CIDR]",
        help="with -f manifests, where ClusterIPs without a fixed address come from, as the "
        "API server's flag (the first CIDR of a family is its default; an IPv6-only cluster "
        "names one IPv6 CIDR); default 10.96.0.0/12,fd00:10:96::/112",
    )
    agent.add_argument(
        "--no-lb-allocator",
        action="store_true",
        help="(--source kubernetes) leave LoadBalancer IP allocation to another controller; "
        "by default one agent, the holder of Lease kube-system/xlb-lb-allocator, allocates",
    )
    agent.add_argument(
        "--lb-class",
        default="",
        help="also allocate for Services with this spec.loadBalancerClass (default: only "
        "Services without one)",
    )
    agent.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address for healthz and healthCheckNodePorts (default 0.0.0.0)",
    )
    agent.add_argument(
        "--metrics-bind-address",
        default="127.0.0.1",
        help="address for metrics and proxyMode (default 127.0.0.1, as kube-proxy's: a pod "
        "may not read them; 0.0.0.0 for a Prometheus outside the node)",
    )
    agent.add_argument("--healthz-port", type=int, default=10256, help="-1 turns it off")
    agent.add_argument("--metrics-port", type=int, default=10249, help="-1 turns it off")
    agent.add_argument(
        "--health-timeout",
        type=float,
        default=60.0,
        help="healthz answers 503 when an update waits longer (seconds)",
    )
    agent.add_argument(
        "--node-ip",
        action="append",
        help="this node's address (repeatable, one per family): the source of SNAT and of "
        "the gossip; default: the Node object's",
    )
    agent.add_argument(
        "--nodeport-addresses",
        action="append",
        metavar="CIDR|primary[,...]",
        help="as kube-proxy's: NodePorts answer only on node addresses in these CIDRs, or on "
        "the node's primary address of each family (primary); default: every node address",
    )
    agent.add_argument(
        "--external-ips",
        default="allow",
        metavar="allow|deny|CIDR[,CIDR]",
        help="which Service externalIPs are served (any tenant may name any address, "
        "CVE-2020-8554): allow (default, as kube-proxy), deny (as the API's "
        "DenyServiceExternalIPs), or only those in these CIDRs; a Node's address never is",
    )
    agent.add_argument(
        "--unallocated-cluster-ips",
        choices=("drop", "allow"),
        default="drop",
        help="an address of a service CIDR that no Service holds: drop (default, as "
        "kube-proxy: refused at connect(), never routed out) or allow (left to the routing, "
        "for a cluster where another proxy serves Services xlb does not see)",
    )
    agent.add_argument(
        "--external-algorithm",
        choices=[a.value for a in Algorithm],
        default="maglev",
        help="backend choice for traffic from outside, unless a Service's xlb.io/lb-algorithm "
        "says otherwise (default maglev: every node picks the same backend for a flow)",
    )
    agent.add_argument(
        "--internal-algorithm",
        choices=[a.value for a in Algorithm],
        default="random",
        help="backend choice at connect() for the node's own processes and pods (default random)",
    )
    agent.add_argument(
        "--uplink",
        default="auto",
        help="the node's interface towards clients, where LoadBalancer IPs are announced; "
        "auto (default): the one holding the first --node-ip, else the default route's",
    )
    agent.add_argument(
        "--devices",
        action="append",
        metavar="IF|GLOB|auto",
        help="interfaces to serve beside the uplink (XDP and tc on each; NodePorts answer on "
        "their addresses), repeatable or comma-separated: names, globs (eth*), or auto (every "
        "up interface holding a node address or a default route)",
    )
    agent.add_argument("--cgroup")
    agent.add_argument("--generic-xdp", action="store_true")
    agent.add_argument(
        "--preloaded",
        action="store_true",
        help="`xlb prepare-node --uplink ...` compiled and attached the programs (the "
        "DaemonSet's privileged init container): only open the pinned maps, so that the "
        "agent needs no CAP_SYS_ADMIN",
    )
    agent.add_argument("--pin-root", default="/sys/fs/bpf/xlb")
    agent.add_argument(
        "--poll-interval",
        type=float,
        default=0.1,
        help="seconds between looks at the sources (default 0.1)",
    )
    agent.add_argument(
        "--min-sync-interval",
        type=float,
        default=0.1,
        help="at least this many seconds between syncs (default 0.1)",
    )
    _datapath_sizes(agent)
    agent.add_argument(
        "--hash-seed",
        metavar="TEXT",
        help="what the flow hashes (Maglev, source hash, SNAT ports) are seeded from; the same "
        "on every node and unknown to clients, or they can aim flows at one backend; default: "
        "the kube-system namespace's uid (Kubernetes source), else a public constant",
    )
    from .datapath.conntrack import Timeouts

    for name, (flag, what) in CONNTRACK_FLAGS.items():
        agent.add_argument(
            flag,
            dest=f"conntrack_{name}",
            type=duration,
            metavar="DURATION",
            help=f"how long {what} lives without a packet (default {getattr(Timeouts(), name)}s)",
        )
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser(
        "status",
        help="show what the datapath holds: frontends, "
        "backends, counters, conntrack, drops (reads the pinned maps)",
    )
    status.add_argument("--pin-root", default="/sys/fs/bpf/xlb")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--rate-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="measure each frontend's new flows a second over this long (0: do not)",
    )
    status.set_defaults(func=cmd_status)

    monitor = sub.add_parser(
        "monitor",
        help="stream the datapath's drops and rejects: flow, frontend, reason (like "
        "`cilium monitor --type drop`; at most 1000 events a second per CPU, all counted)",
    )
    monitor.add_argument("--pin-root", default="/sys/fs/bpf/xlb")
    monitor.add_argument("--json", action="store_true", help="one JSON object per event")
    monitor.add_argument("--count", type=int, default=0, help="stop after this many events")
    monitor.add_argument(
        "--reason", action="append", default=[], help="only this reason (repeatable)"
    )
    monitor.set_defaults(func=cmd_monitor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .datapath import BccMissing
    from .datapath.programs import DatapathError
    from .lab.topology import LabError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BccMissing, DatapathError, LabError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`xlb model | head`): stop quietly, as other Unix tools do;
        # stdout is pointed at /dev/null so that the interpreter's final flush cannot raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped


if __name__ == "__main__":
    sys.exit(main())
