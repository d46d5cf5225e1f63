"""Every flag of every subcommand, declared once: those a node's datapath is loaded with
(`datapath up`, `prepare-node`, `agent`) come from one function each."""

from __future__ import annotations

import argparse

from ..datapath.config import DatapathConfig
from ..model.state import Algorithm, Forwarding
from . import commands
from .options import CONNTRACK_FLAGS, duration

PIN_ROOT = DatapathConfig().pin_root


def _node_datapath(
    parser: argparse.ArgumentParser,
    node_ip_help: str,
    uplink_default: str | None = "auto",
    uplink_help: str = "the node's interface towards clients, where LoadBalancer IPs are "
    "announced; auto (default): the one holding the first --node-ip, else the default route's",
) -> None:
    """The flags a node's datapath is loaded with, the same for every command that loads
    it: where it attaches, where it pins, the map sizes it is compiled with."""
    parser.add_argument("--node-ip", action="append", help=node_ip_help)
    parser.add_argument("--uplink", default=uplink_default, help=uplink_help)
    parser.add_argument(
        "--devices",
        action="append",
        metavar="IF|GLOB|auto",
        help="interfaces to serve beside the uplink (XDP and tc on each; NodePorts answer on "
        "their addresses), repeatable or comma-separated: names, globs (eth*), or auto (every "
        "up interface holding a node address or a default route)",
    )
    parser.add_argument(
        "--cgroup", help="cgroup v2 directory for the socket hooks (default: the cgroup v2 root)"
    )
    parser.add_argument(
        "--generic-xdp",
        action="store_true",
        help="attach XDP in generic (skb) mode, for drivers without native XDP",
    )
    parser.add_argument(
        "--pin-root", default=PIN_ROOT, help=f"bpffs directory (default {PIN_ROOT})"
    )
    sizes = DatapathConfig()
    parser.add_argument(
        "--max-rings",
        type=int,
        help="no longer used: every backend group has a Maglev table of its own (accepted, "
        "with a warning, so that a DaemonSet that passes it keeps starting)",
    )
    parser.add_argument(
        "--ring-size",
        type=int,
        default=sizes.ring_size,
        help="the largest Maglev table M, prime; a group's table is the smallest of "
        f"251, 1021, 4093, 16381, 65521 with 100 slots a backend, up to this (default "
        f"{sizes.ring_size})",
    )
    parser.add_argument("--ct-size", type=int, default=sizes.ct_size, help="conntrack entries")
    parser.add_argument(
        "--local-delivery",
        choices=("stack", "redirect"),
        default=sizes.local_delivery,
        help="how a packet from outside balanced to a pod on this node reaches it: stack "
        "(default: through the host's routing and netfilter, as kube-proxy's) or redirect "
        "(straight into the pod's network namespace with bpf_redirect_peer: faster, but it "
        "skips host-level NetworkPolicy of iptables-based CNIs, which is why it is opt-in)",
    )


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
    model.set_defaults(func=commands.cmd_model)

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
    _node_datapath(up, "this node's address for SNAT (default: from its Node)")
    up.add_argument(
        "--ebpf",
        action="store_true",
        help="print the C the programs are compiled from, with flags, and exit",
    )
    down = dp_sub.add_parser("down", help="detach everything xlb attached and remove its pins")
    down.add_argument("--uplink", help="the interfaces to detach from (comma-separated)")
    down.add_argument("--cgroup")
    down.add_argument("--pin-root", default=PIN_ROOT)
    up.set_defaults(func=commands.cmd_datapath_up)
    down.set_defaults(func=commands.cmd_datapath_down)

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
        "--without-xlb",
        action="append",
        default=[],
        metavar="NODE",
        help="a node that runs no xlb, as in a cluster that runs it on only some nodes "
        "(repeatable); xlb's nodes reach its pods by SNAT",
    )
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
    lab.set_defaults(func=commands.cmd_lab)

    bench = sub.add_parser(
        "bench",
        help="measure: dataplane (packet rates against kube-proxy's iptables and nftables modes)",
    )
    bench.add_argument(
        "what",
        choices=[
            "dataplane",
            "eastwest",
            "localdelivery",
            "controlplane",
            "failover",
            "ci",
            "readme",
        ],
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=commands.cmd_bench)

    prep = sub.add_parser(
        "prepare-node",
        help="mount bpffs, set the sysctls xlb needs and, "
        "with XLB_CLEANUP_KUBE_PROXY=true, remove kube-proxy's rules",
    )
    _node_datapath(
        prep,
        "this node's address, for --uplink auto",
        uplink_default=None,
        uplink_help="also compile and attach the programs here (auto: as the agent's "
        "--uplink), for an agent started with --preloaded",
    )
    prep.set_defaults(func=commands.cmd_prepare_node)

    clean = sub.add_parser(
        "cleanup-kube-proxy",
        help="remove kube-proxy's iptables, nftables and IPVS state, keeping every other rule",
    )
    clean.set_defaults(func=commands.cmd_cleanup)

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
    dem.set_defaults(func=commands.cmd_demo)

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
        "--forwarding-mode",
        choices=[f.value for f in Forwarding],
        default="snat",
        help="how flows from outside reach backends on other nodes, unless a Service's "
        "xlb.io/forwarding-mode says otherwise: snat (default: replies come back through "
        "this node), dsr (direct server return: the backend sees the client's address and "
        "answers it directly; needs xlb on the backend's node, known from the gossip, else "
        "SNAT), hybrid (DSR for TCP, SNAT for UDP)",
    )
    agent.add_argument(
        "--internal-algorithm",
        choices=[a.value for a in Algorithm],
        default="random",
        help="backend choice at connect() for the node's own processes and pods (default random)",
    )
    _node_datapath(
        agent,
        "this node's address (repeatable, one per family): the source of SNAT and of the "
        "gossip; default: the Node object's",
    )
    agent.add_argument(
        "--preloaded",
        action="store_true",
        help="`xlb prepare-node --uplink ...` compiled and attached the programs (the "
        "DaemonSet's privileged init container): only open the pinned maps, so that the "
        "agent needs no CAP_SYS_ADMIN",
    )
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
    agent.add_argument(
        "--hash-seed",
        metavar="TEXT",
        help="what the flow hashes (Maglev, source hash, SNAT ports) are seeded from; the same "
        "on every node and unknown to clients, or they can aim flows at one backend; default: "
        "the kube-system namespace's uid (Kubernetes source), else a public constant",
    )
    from ..datapath.conntrack import Timeouts

    for name, (flag, what) in CONNTRACK_FLAGS.items():
        agent.add_argument(
            flag,
            dest=f"conntrack_{name}",
            type=duration,
            metavar="DURATION",
            help=f"how long {what} lives without a packet (default {getattr(Timeouts(), name)}s)",
        )
    agent.set_defaults(func=commands.cmd_agent)

    status = sub.add_parser(
        "status",
        help="show what the datapath holds: frontends, "
        "backends, counters, conntrack, drops (reads the pinned maps)",
    )
    status.add_argument("--pin-root", default=PIN_ROOT)
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--rate-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="measure each frontend's new flows a second over this long (0: do not)",
    )
    status.set_defaults(func=commands.cmd_status)

    monitor = sub.add_parser(
        "monitor",
        help="stream the datapath's drops and rejects: flow, frontend, reason (like "
        "`cilium monitor --type drop`; at most 1000 events a second per CPU, all counted)",
    )
    monitor.add_argument("--pin-root", default=PIN_ROOT)
    monitor.add_argument("--json", action="store_true", help="one JSON object per event")
    monitor.add_argument("--count", type=int, default=0, help="stop after this many events")
    monitor.add_argument(
        "--reason", action="append", default=[], help="only this reason (repeatable)"
    )
    monitor.set_defaults(func=commands.cmd_monitor)
    return parser
