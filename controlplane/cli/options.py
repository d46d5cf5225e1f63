"""Flag values -> the configs the rest of controlplane takes. A value that cannot be used
ends the command with what to write instead (SystemExit), before anything is touched."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from ..model import TranslateConfig
from ..model.state import Algorithm, Forwarding
from ..sources.manifests import load_cluster
from ..sources.simulated import ClusterConfig

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


def node_of(args: argparse.Namespace):
    """The cluster in the manifests and this node."""
    cluster = load_cluster(args.filename, ClusterConfig(nodes=args.nodes))
    nodes = {n.name: n for n in cluster.nodes}
    name = args.node or (cluster.nodes[0].name if cluster.nodes else "")
    if name not in nodes:
        raise SystemExit(f"xlb: no node {name!r}; nodes: {', '.join(nodes) or 'none'}")
    return cluster, nodes[name]


def datapath_config(args: argparse.Namespace):
    from ..datapath.config import DatapathConfig, hash_seed_of
    from ..datapath.conntrack import Timeouts

    given = {
        name: getattr(args, f"conntrack_{name}")
        for name in CONNTRACK_FLAGS
        if getattr(args, f"conntrack_{name}", None) is not None
    }
    seed = getattr(args, "hash_seed", None)
    if getattr(args, "max_rings", None) is not None:
        print(
            "xlb: warning: --max-rings no longer has any effect (every backend group has a "
            "Maglev table of its own, sized from its backends); drop it",
            file=sys.stderr,
        )
    return DatapathConfig(
        pin_root=args.pin_root,
        ring_size=args.ring_size,
        ct_size=args.ct_size,
        local_delivery=getattr(args, "local_delivery", "stack"),
        ct_timeouts=Timeouts(**given),
        hash_seed=hash_seed_of(seed) if seed else 0,
    )


def agent_config(args: argparse.Namespace, node: str):
    """The agent's settings from its command line (every flag lands here)."""
    from ..agent import AgentConfig
    from ..datapath.attach import cgroup2_root

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
        gossip_key=read_gossip_key(args.gossip_key_file),
        gossip_port=args.gossip_port,
        l2_refresh=args.l2_refresh_interval,
        l2_placement=args.l2_placement,
        peers=parse_peers(args.peer or [], args.gossip_port),
        lb_allocator=not args.no_lb_allocator,
        lb_class=args.lb_class,
        unallocated_cluster_ips=args.unallocated_cluster_ips,
        translate=TranslateConfig(
            external_algorithm=Algorithm(args.external_algorithm),
            internal_algorithm=Algorithm(args.internal_algorithm),
            forwarding=Forwarding(args.forwarding_mode),
            proxy_name=args.proxy_name,
            nodeport_cidrs=parse_nodeport_addresses(args.nodeport_addresses or []),
            external_ips=parse_external_ips(args.external_ips),
        ),
    )


def cluster_identity(client) -> str | None:
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


def parse_cidrs(value: str) -> tuple[str, ...]:
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


def parse_external_ips(value: str) -> tuple[str, ...]:
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


def parse_nodeport_addresses(entries: list[str]) -> tuple[str, ...]:
    """--nodeport-addresses as kube-proxy takes it: CIDRs and `primary`, comma-separated or
    repeated."""
    from ..model.translate import NODEPORT_PRIMARY

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
    from ..datapath.attach import default_uplink
    from ..datapath.devices import choose, interfaces

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


def parse_peers(entries: list[str], port: int) -> dict[str, tuple[str, int]]:
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


def parse_pools(entries: list[str]) -> list:
    from ..model.pools import config_pool

    try:  # each flag may hold several pools, `;`-separated (one ConfigMap value); "" none
        return [config_pool(e) for x in entries for e in x.split(";") if e.strip()]
    except ValueError as exc:
        raise SystemExit(f"xlb agent: --pool {exc}") from None


def read_gossip_key(path: str | None) -> bytes:
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
