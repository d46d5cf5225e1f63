"""One function per subcommand: args in, exit status out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ..model import Level, TranslateConfig, translate
from ..model.state import Algorithm, DesiredState
from ..model.translate import with_address_space
from ..sources.manifests import load_cluster
from ..sources.simulated import ClusterConfig
from .options import (
    agent_config,
    cluster_identity,
    datapath_config,
    node_of,
    parse_cidrs,
    parse_pools,
    resolve_devices,
)
from .render import lab_status, model_json, render_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "services"


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
        print(json.dumps(model_json(state, node_name), indent=2))
    else:
        print(render_model(state, node_name))
    errors = sum(1 for d in state.diagnostics if d.level is Level.ERROR)
    return 1 if (errors and args.strict) else 0


def cmd_datapath_up(args: argparse.Namespace) -> int:
    from ..datapath.attach import cgroup2_root
    from ..datapath.devices import interfaces, local_addresses
    from ..datapath.node import NodeDatapath, ensure_sysctls
    from ..datapath.programs import BPF_DIR, expand

    cluster, node = node_of(args)
    cfg = datapath_config(args)
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
    while res.tables_due:  # no agent follows to build the rest: all of them now
        more = dp.apply(state, addr4, addr6)
        res.tables, res.table_bytes, res.tables_due = (
            res.tables + more.tables,
            res.table_bytes + more.table_bytes,
            more.tables_due,
        )
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    mib = sum(cfg.memory(os.cpu_count() or 1).values()) / 2**20
    print(
        f"xlb: node {node.name}: {len(state.frontends)} frontends on {', '.join(devices)} "
        f"(XDP, tc) and cgroup {cgroup}; {res.writes} writes, {res.deletes} deletes, "
        f"{res.tables} Maglev tables ({res.table_bytes / 2**10:.0f} KiB) in "
        f"{res.seconds * 1000:.1f} ms; maps under {cfg.pin_root} reserve about {mib:.0f} MiB"
        + (f"; {res.tables_due} tables due (built by the agent)" if res.tables_due else "")
    )
    return 0


def cmd_datapath_down(args: argparse.Namespace) -> int:
    from ..datapath.attach import cgroup2_root
    from ..datapath.node import unload

    devices = [d for d in (args.uplink or "").split(",") if d]
    unload(devices, args.cgroup or cgroup2_root(), args.pin_root)
    print(f"xlb: detached from {', '.join(devices) or '(no uplink)'} and removed {args.pin_root}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import logging

    from ..agent import run_agent
    from ..sources.files import ManifestSource

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    node = args.node or os.environ.get("NODE_NAME", "")
    if not node:
        raise SystemExit(
            "xlb agent: give --node, or set NODE_NAME (the DaemonSet does, from spec.nodeName)"
        )
    if args.source == "kubernetes":
        from ..sources.kubernetes import KubernetesSource, api_client

        client = api_client(args.kubeconfig)
        source = KubernetesSource(
            client,
            endpoints_api=args.endpoints_api,
            proxy_name=args.proxy_name,
            pools=parse_pools(args.pool or []),
        )
        if not args.hash_seed:
            args.hash_seed = cluster_identity(client)
    else:
        if not args.filename:
            raise SystemExit("xlb agent: --source manifests needs -f FILE|DIR")
        cluster_cfg = ClusterConfig(pools=tuple(parse_pools(args.pool or [])))
        if args.service_cluster_ip_range:
            cluster_cfg = dataclasses.replace(
                cluster_cfg, service_cidrs=parse_cidrs(args.service_cluster_ip_range)
            )
        source = ManifestSource(args.filename, cluster_cfg)
    return run_agent(agent_config(args, node), source, datapath_config(args))


def cmd_lab(args: argparse.Namespace) -> int:
    from ..lab.lab import Lab

    lab = Lab(args.name)
    if args.action == "up":
        families = ["IPv4", "IPv6"] if args.ip_family == "dual" else [args.ip_family]
        state = lab.up(
            args.filename or [str(EXAMPLES)],
            nodes=args.nodes,
            families=families,
            without_xlb=args.without_xlb,
        )
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
    from ..lab.demo import demo

    return demo(
        args.filename or [str(EXAMPLES)],
        name=args.name,
        check=args.check,
        keep=args.keep,
        nodes=args.nodes,
    )


def cmd_prepare_node(args: argparse.Namespace) -> int:
    """What the DaemonSet's privileged init container does, once per start: bpffs, the
    sysctls, kube-proxy's leftovers if asked, and (with --uplink) the programs compiled and
    attached, so that the agent needs neither CAP_SYS_ADMIN nor the compiler."""
    from ..datapath import loader
    from ..datapath.attach import cgroup2_root
    from ..datapath.node import ensure_sysctls
    from ..datapath.programs import ensure_bpffs

    cfg = datapath_config(args)
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
    from ..cleanup import cleanup_kube_proxy

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
    bench = Path(__file__).resolve().parents[2] / "bench"
    if not (bench / f"{args.what}.py").exists():
        raise SystemExit(f"xlb bench: no bench/{args.what}.py here; run it from a checkout")
    sys.path.insert(0, str(bench.parent))
    module = __import__(f"bench.{args.what}", fromlist=["main"])
    return module.main(args.rest)


def cmd_status(args: argparse.Namespace) -> int:
    from ..datapath.maps import Maps
    from ..datapath.status import collect, render

    status = collect(Maps.open(args.pin_root), rate_interval=args.rate_interval)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Drop and reject events as the kernel reports them, until interrupted (or --count)."""
    from ..datapath.events import EventRing
    from ..datapath.maps import Maps

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
