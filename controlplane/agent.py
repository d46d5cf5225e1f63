"""The agent: sources -> model -> one coalesced sync, for as long as it runs.

Changes that arrive within one poll interval become one sync, and syncs are at least
min_interval apart. Each diagnostic is logged once, when it first appears. On exit the
datapath stays as it is: traffic never depends on the agent running (a restarted agent reads
the pinned maps back and carries on).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import runstate
from .datapath.node import remote_addresses, warm_neighbours
from .heap import collector_paused, release_memory
from .l2.election import drained, ours_to_announce, owners
from .l2.placement import take_now
from .model import Level, Translator, translate
from .model.diagnostics import Diagnostic
from .model.pools import pool_of
from .model.snapshot import Cluster
from .model.state import DesiredState
from .model.translate import AddressSpace, TranslateConfig, with_address_space
from .serve import Endpoints, Health, HealthCheckNodePorts, Metrics

log = logging.getLogger("xlb.agent")


@dataclass
class AgentConfig:
    node: str
    uplink: str
    cgroup: str
    pin_root: str
    node_ips: list[str] = field(default_factory=list)
    poll_interval: float = 0.1
    min_interval: float = 0.1
    devices: list[str] = field(default_factory=list)  # served (XDP, tc); empty: the uplink
    native_xdp: bool = True
    preloaded: bool = False  # `xlb prepare-node` compiled and attached; open the pins only
    neighbour_refresh: float = 30.0  # seconds between re-resolving next hops
    ct_collect_interval: float = 10.0  # seconds between passes of the conntrack collector
    bind_address: str = "0.0.0.0"
    metrics_bind_address: str = "127.0.0.1"  # kube-proxy's default: metrics stay on the node
    healthz_port: int = 10256  # -1: off
    metrics_port: int = 10249  # -1: off
    health_timeout: float = 60.0
    gossip_key: bytes = b""  # empty: no membership, no LoadBalancer IP announcements
    gossip_port: int = 7947  # not 7946: MetalLB speakers may still run during a migration
    l2_refresh: float = 240.0  # seconds between refreshes of each address held (0: none)
    # the members from the config (name -> (address, port)); empty: from the Node objects
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    lb_allocator: bool = True  # with the Kubernetes source: allocate LB IPs (Lease holder)
    lb_class: str = ""  # also serve Services of this spec.loadBalancerClass
    # ordered: MetalLB's (each IP on the first live node of its hash order); balanced: at
    # most ceil(IPs / nodes) per node, few moves (l2/placement.py); every node the same
    l2_placement: str = "ordered"
    # --unallocated-cluster-ips: "drop" (kube-proxy's: an address of a service CIDR that no
    # Service holds goes nowhere) or "allow" (left to the routing: for a cluster where another
    # proxy serves Services xlb does not see, e.g. by service-proxy-name)
    unallocated_cluster_ips: str = "drop"
    # what the model is told: --proxy-name, --nodeport-addresses, the default algorithms
    translate: TranslateConfig = field(default_factory=TranslateConfig)


def desired_state(
    cluster: Cluster,
    node_name: str,
    cfg: TranslateConfig | None = None,
    translator: Callable[..., DesiredState] = translate,
    local_addresses: Iterable[str] = (),
    drop_unallocated: bool = True,
    address_space: Callable[..., DesiredState] = with_address_space,
) -> tuple[DesiredState, list[str]]:
    """This node's desired state and its addresses (for SNAT: the Node object's). NodePorts
    answer on the Node's addresses and on local_addresses (those of the devices served).
    drop_unallocated: the service CIDRs go along (their unallocated addresses go nowhere)."""
    node = next((n for n in cluster.nodes if n.name == node_name), None)
    extra = tuple(a for a in local_addresses if node is not None and a not in node.addresses)
    own = list(node.addresses) if node is not None else []
    if extra:
        node = dataclasses.replace(node, addresses=node.addresses + extra)
    if node is None:
        diag = Diagnostic(
            Level.ERROR,
            "Node",
            "",
            node_name,
            "",
            "not in the cluster: check --node against the Node objects",
        )
        return DesiredState(diagnostics=(diag,)), []
    state = translator(cluster.services, cluster.slices, node, cfg, cluster.changes)
    state = address_space(
        state,
        cluster.services,
        cluster.service_cidrs if drop_unallocated else (),
        cfg,
        cluster.changes,
    )
    # replace(), not a new state: the translator's hints (what changed) go along to the sync
    return dataclasses.replace(
        state, diagnostics=tuple(cluster.diagnostics) + state.diagnostics
    ), own


def gossip_address(node_ips: list[str]) -> str:
    """Where the gossip socket binds: the node's IPv4 address, else its IPv6 one (an
    IPv6-only cluster), else every IPv4 address."""
    return next((a for a in node_ips if ":" not in a), None) or next(
        (a for a in node_ips if ":" in a), "0.0.0.0"
    )


def gossip_peers(nodes, cfg) -> dict[str, tuple[str, int]]:
    """Every Node's first address of the gossip socket's family: IPv6-only nodes gossip
    over IPv6, and a dual-stack cluster over IPv4, as the socket binds."""
    v6 = ":" in cfg.address
    return {
        n.name: (address, cfg.port)
        for n in nodes
        for address in [next((a for a in n.addresses if (":" in a) == v6), None)]
        if address is not None
    }


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        source,
        datapath,
        metrics: Metrics | None = None,
        hc_ports: HealthCheckNodePorts | None = None,
        members=None,
        announcer=None,
        allocator=None,
    ) -> None:
        self.cfg, self.source, self.datapath = cfg, source, datapath
        self.health = Health(
            cfg.health_timeout, source_errors=lambda: source.health().get("errors", {})
        )
        self.metrics = metrics or Metrics()
        self.hc_ports = hc_ports
        self.members, self.announcer, self.allocator = members, announcer, allocator
        self.announcers: dict[str, str] = {}  # every LB IP -> its announcing node
        self.drained_for: set[str] = set()  # the dead nodes the last sync drained
        self.drained_keys: set[str] = set()  # the Services whose slices that drain altered
        self.record_base: dict | None = None
        self.leading = False
        self.unannounced: set[str] = set()
        self.skew_reported: set[str] = set()
        self.announced: set[str] = set()  # the LoadBalancer IPs this node answers for
        self.addresses: dict[str, str] = {}  # _local_addresses' last answer, and when
        self.addresses_at = -1e9
        self.isolated = False  # hearing no majority of the members (see _elect)
        self.settling = False  # just started: taking nothing over yet (Members.settle)
        self.settle_told = False  # "gossip settled" logged
        # others' published holdings and settling flags, as last elected on
        self.held_seen: dict[str, tuple[int | None, str]] = {}
        self.balancing = False  # some LB IPs are placed by balanced placement
        self.cluster = Cluster()  # as of the last sync: what a new election starts from
        self.beat_thread: threading.Thread | None = None
        self.live: set[str] = set()
        self.reported: set[Diagnostic] = set()
        self.stop = threading.Event()
        self.syncs = 0
        self.last_sync = 0.0
        self.remote: set[str] = set()
        self.last_warm = 0.0
        self.retry = False
        self.xlb_nodes: frozenset[str] = frozenset()  # as the last sync saw them (DSR)
        self.failures = 0  # syncs failed in a row: the next waits 0.1 s * 2^failures (<= 30 s)
        self.next_try = 0.0
        self.state = DesiredState()
        self.translator = Translator()  # re-translates only the Services that changed
        self.address_space = AddressSpace()  # walks the Services only when they changed
        self.udp_gone: queue.Queue = queue.Queue()  # removed backends, for _reconcile_udp
        self.udp_unreachable_told = False
        self.publish = False  # the real agent (run_agent) keeps a record for `xlb status`
        self.published: dict | None = None

    def _drain_dead(self, cluster: Cluster) -> Cluster:
        """The cluster with endpoints on nodes the gossip declared dead draining (see
        election.drained); not while this node hears no majority (then it may be the one
        cut off)."""
        before, self.drained_for = self.drained_for, set()
        if self.members is not None and not self.isolated:
            self.drained_for = set(self.members.dead())
        slices = drained(cluster.slices, self.drained_for) if self.drained_for else cluster.slices
        altered = (
            {
                new.service_key
                for old, new in zip(cluster.slices, slices, strict=True)
                if old is not new
            }
            if slices is not cluster.slices
            else set()
        )
        # the Services drained now, and when the dead nodes changed those drained before:
        # the source's changes do not name them (it never saw the drain)
        widen = (altered | self.drained_keys) if self.drained_for != before else set()
        self.drained_keys = altered
        if not widen and slices is cluster.slices:
            return cluster
        return dataclasses.replace(cluster, slices=slices, changes=cluster.changes.widened(widen))

    def _xlb_nodes(self) -> frozenset[str]:
        """The nodes known to run xlb, whose backends DSR may reach: the gossip's live members
        (a node whose agent died still has its programs, which take the carrier off, but a
        node that never joined may run none). Without the gossip, only this one."""
        if self.members is None:
            return frozenset({self.cfg.node})
        return frozenset(self.members.alive() | self.members.skewed())

    def sync_once(self) -> None:
        cluster = self._drain_dead(self.source.snapshot())
        where = self._local_addresses()
        served = {a for a, dev in where.items() if dev in self.cfg.devices}
        # every Node's addresses: never taken by a tenant's externalIP or ingress IP
        self.xlb_nodes = self._xlb_nodes()
        translate_cfg = dataclasses.replace(
            self.cfg.translate,
            node_addresses=frozenset(a for n in cluster.nodes for a in n.addresses),
            xlb_nodes=self.xlb_nodes,
        )
        with collector_paused():
            state, addresses = desired_state(
                cluster,
                self.cfg.node,
                translate_cfg,
                translator=self.translator,
                local_addresses=sorted(served),
                drop_unallocated=self.cfg.unallocated_cluster_ips == "drop",
                address_space=self.address_space,
            )
        state = self._unserved(state, where)
        # Events on Services: from one node only (the first by name), or every node would
        # post the same one
        reporter = getattr(self.source, "report", None)
        if reporter and cluster.nodes and min(n.name for n in cluster.nodes) != self.cfg.node:
            reporter = None
        for d in state.diagnostics:
            if d not in self.reported and d.level is not Level.INFO:
                log.warning("%s", d)
                if reporter and d.kind == "Service":
                    reporter(d, self.cfg.node)
        self.reported = set(state.diagnostics)
        if self.publish:
            self._publish(state)
        addrs = self.cfg.node_ips or addresses
        addr4 = next((a for a in addrs if ":" not in a), "0.0.0.0")
        addr6 = next((a for a in addrs if ":" in a), "::")
        with collector_paused():
            res = self.datapath.apply(state, addr4, addr6)
        self.state = state
        gone = getattr(res, "gone", None)
        if gone and hasattr(self.datapath, "reconcile_udp"):
            self.udp_gone.put(set(gone))  # reset by the reconciler thread, off the sync
        if self.allocator is not None:  # after the datapath: its API writes never delay it
            try:
                self.allocator.sync(cluster)
            except Exception:  # allocation is retried on the next sync
                log.exception("LoadBalancer IP allocation failed; retrying on the next sync")
                self.retry = True
        self.cluster = cluster
        if self.members is not None:
            self._elect(cluster)
        families = tuple(sorted({"IPv6" if ":" in a else "IPv4" for a in addrs})) or ("IPv4",)
        self.metrics.synced(res.seconds, len(state.frontends), cluster.slices, families)
        if self.hc_ports is not None:
            for problem in self.hc_ports.sync(list(state.health_checks)):
                log.warning("%s", problem)
        self.health.node(next((n for n in cluster.nodes if n.name == self.cfg.node), None))
        self.health.updated()
        own = set(addresses) | set(self.cfg.node_ips)
        others = {a for n in cluster.nodes for a in n.addresses} - own
        self.remote = remote_addresses(state, others)
        self.warm()
        self.syncs += 1
        self.last_sync = time.monotonic()
        if self.publish:
            self._write_record()  # what _publish made, and ready after the first sync
        # What a sync leaves is long-lived (the parsed cluster, the translation, the maps'
        # mirror): out of the cyclic collector's sight, a full collection no longer walks a
        # million objects in the middle of the next sync (~200 ms at 10,000 Services)
        gc.freeze()
        if res.writes + res.deletes > 10000:  # a big sync's garbage back to the system
            release_memory()
        for w in res.warnings:
            log.warning("%s", w)
        due = getattr(res, "tables_due", 0)
        if due:
            self.retry = True  # the rest of the Maglev tables, on the next turn
        if res.writes or res.deletes:
            log.info(
                "sync %d: %d frontends; %d writes, %d deletes, %d Maglev tables%s in %.1f ms",
                self.syncs,
                len(state.frontends),
                res.writes,
                res.deletes,
                res.tables,
                f" ({due} due)" if due else "",
                res.seconds * 1000,
            )

    def _publish(self, state: DesiredState) -> None:
        """The record `xlb status` shows beside the maps: the policies and what they refused
        (written once the sync is done, and only when it changes)."""
        refused = sorted(
            f"{d.namespace}/{d.name}: {d.message}"
            for d in state.diagnostics
            if d.kind == "Service" and d.field == "spec.externalIPs" and d.level is Level.ERROR
        )
        self.record_base = {
            "pid": os.getpid(),
            "node": self.cfg.node,
            "externalIPs": ",".join(self.cfg.translate.external_ips),
            "refusedExternalIPs": refused,
            "gossip": self.members is not None,
        }

    def _write_record(self) -> None:
        if self.record_base is None:
            return
        record = {
            **self.record_base,
            "announcers": dict(sorted(self.announcers.items())),
            # synced, and (gossiping) past the settle: LoadBalancer IPs are answered. What
            # `xlb lab` waits for, and an operator may
            "ready": bool(self.syncs) and (self.members is None or self.settle_told),
        }
        if record != self.published:
            try:
                runstate.write(self.cfg.pin_root, record)
            except OSError as exc:  # a read-only /run costs `xlb status` a line, nothing more
                log.warning("cannot write the record for `xlb status`: %s", exc)
            self.published = record

    ADDRESSES_TTL = 5.0  # seconds the node's addresses are taken as known between syncs

    def _local_addresses(self) -> dict[str, str]:
        """This node's addresses -> the interface holding each, looked up at most every
        ADDRESSES_TTL (three netlink dumps: not on every sync of a burst); empty unless the
        agent serves named devices (an agent under test drives a stand-in datapath)."""
        if not self.cfg.devices:
            return {}
        now = time.monotonic()
        if now - self.addresses_at < self.ADDRESSES_TTL:
            return self.addresses
        from .datapath.devices import interfaces, local_addresses

        try:
            self.addresses, self.addresses_at = local_addresses(interfaces()), now
        except Exception as exc:  # netlink refused: the last known, tried again next sync
            log.warning("cannot list the node's addresses: %s", exc)
        return self.addresses

    def _unserved(self, state: DesiredState, where: dict[str, str]) -> DesiredState:
        """One warning per frontend on a local address of an interface xlb does not serve:
        traffic that arrives there is not balanced (never a silent black hole)."""
        from .datapath.devices import unserved

        external = [
            (fe.service, fe.address, fe.port, str(fe.protocol))
            for fe in state.frontends
            if str(fe.scope) == "external"
        ]
        found = unserved(external, self.cfg.devices, where)
        if not found:
            return state
        diags = []
        for service, address, port, proto, device in dict.fromkeys(found):
            namespace, _, name = service.partition("/")
            diags.append(
                Diagnostic(
                    Level.WARNING,
                    "Service",
                    namespace,
                    name,
                    "",
                    f"{proto} {address}:{port} is on {device}, which xlb does not serve "
                    f"(--devices {','.join(self.cfg.devices)}): traffic arriving on {device} "
                    "is not balanced; add it to --devices or leave its address out with "
                    "--nodeport-addresses",
                )
            )
        return dataclasses.replace(state, diagnostics=state.diagnostics + tuple(diags))

    def _elect(self, cluster: Cluster) -> None:
        """Which LoadBalancer IPs this node answers for, from the live members; announces
        the ones it takes over."""
        self.members.set_peers(self.cfg.peers or gossip_peers(cluster.nodes, self.members.cfg))
        skewed = self.members.skewed()
        if skewed - self.skew_reported:
            log.warning(
                "clock skew with %s: their signed datagrams are more than %.0f s off this "
                "node's clock (check NTP); they count as alive, so that no address moves",
                ", ".join(sorted(skewed)),
                self.members.cfg.max_skew,
            )
        self.skew_reported = skewed
        before, self.live = self.live, self.members.alive() | skewed
        meta = self.members.meta()
        uplinks = {n: m["uplink"] for n, m in meta.items() if m.get("uplink")}
        self.held_seen = self._published_holdings(meta)
        # a dead member's holdings are void: its addresses are free to take at once
        held = {n: ips for n, ips in self.members.holdings().items() if n in self.live}
        held[self.cfg.node] = set(self.announced)  # ours as it is, not as last told
        pools = cluster.pools
        cluster_wide = self.cfg.l2_placement == "balanced"
        self.balancing = cluster_wide or any(p.balanced for p in pools or ())

        def balance(ip: str) -> bool:
            pool = pool_of(ip, pools) if pools else None
            return cluster_wide or (pool is not None and pool.balanced)

        chosen = owners(
            cluster.services,
            cluster.slices,
            cluster.nodes,
            self.live,
            cluster.advertisements,
            cluster.pools,
            uplinks,
            self.cfg.lb_class,
            balance,
            held,
        )
        mine = ours_to_announce(cluster.services, cluster.pools, self.cfg.lb_class)
        nobody = mine - set(chosen)
        for ip in sorted(nobody - self.unannounced):
            log.warning(
                "LoadBalancer IP %s: no live node may announce it (L2Advertisements, "
                "externalTrafficPolicy Local without a ready endpoint, or no live member)",
                ip,
            )
        self.unannounced = nobody
        self._announcers_changed(cluster, chosen)
        owned = {ip for ip, n in chosen.items() if n == self.cfg.node}
        # balanced placement: an IP another live member still holds is taken once it has let
        # it go (and said so), so that the others' computations stay what ours is
        owned = {
            ip
            for ip in owned
            if ip in self.announced or not balance(ip) or take_now(ip, self.cfg.node, held)
        }
        # and one placed on a member still settling stays here until it may take it (it
        # says so in the gossip): the hand-over is then one datagram, not the settle
        settling = {n for n, m in meta.items() if m.get("settling") == "1"} - {self.cfg.node}
        owned |= {ip for ip in self.announced if balance(ip) and chosen.get(ip) in settling}
        known = self.members.known()
        self.settling = not self.members.settled()
        if self.settling:
            # just started: the others have not all heard it yet and may still answer for
            # these; it takes them when they have let go (run() elects again once settled)
            owned &= self.announced
        elif known >= 3 and 2 * len(self.live) <= known:
            # Fewer than a majority heard: this node may be the one cut off (its cable, its
            # clock, a partition), and the others the ones that live. It keeps answering for
            # what it holds and takes nothing more, so two sides never answer for one
            # address. (With two nodes no majority exists; MetalLB's rule holds there.)
            kept = owned & self.announced
            if owned - kept and not self.isolated:
                log.warning(
                    "hearing %d of %d members, no majority: not taking over %d addresses "
                    "until more are heard", len(self.live), known, len(owned - kept),
                )  # fmt: skip
            self.isolated, owned = True, kept
        else:
            self.isolated = False
        gained, lost = self.datapath.announce(owned)
        self.announced = set(owned)
        if self.balancing:  # what balanced placement starts from, on every node
            self.members.set_holdings(owned)
        if self.announcer is not None:
            self.announcer.hold(set(owned))  # refreshes, solicited-node groups
        if self.live - before:
            # A node came back: the LAN may still point at it for addresses it answered
            # for while it was cut off, so say again where every one of ours lives.
            gained = owned
        for ip in sorted(gained):
            log.info("announcing %s", ip)
            if self.announcer is not None:
                self.announcer.announce(ip)
        for ip in sorted(lost):
            log.info("no longer announcing %s (now %s)", ip, chosen.get(ip, "nobody"))

    def _published_holdings(self, meta: dict[str, dict[str, str]] | None = None) -> dict:
        """Which holdings the other members published and whether they still settle (node
        -> (version, settling)): balanced placement elects again when either changes."""
        meta = self.members.meta() if meta is None else meta
        versions = self.members.holdings_versions()
        return {
            n: (versions.get(n), meta.get(n, {}).get("settling", ""))
            for n in set(versions) | set(meta)
            if n != self.cfg.node
        }

    def _announcers_changed(self, cluster, chosen: dict[str, str]) -> None:
        """Every LoadBalancer IP's announcing node, as this election sees it: in the metrics,
        in the record `xlb status` shows, and a Normal Event on the Service of an address
        that this node takes (as MetalLB's speaker says nodeAssigned)."""
        if chosen == self.announcers:
            return
        self.metrics.announcing(chosen)
        post = getattr(self.source, "post_event", None)
        if post is not None:
            service_of = {ip: s for s in cluster.services for ip in s.ingress_ips}
            for ip, node in sorted(chosen.items()):
                svc = service_of.get(ip)
                if node == self.cfg.node and self.announcers.get(ip) != node and svc:
                    post(svc.namespace, svc.name, "Normal", "nodeAssigned",
                         f"announcing {ip} from node {node} (layer 2)", self.cfg.node)  # fmt: skip
        self.announcers = dict(chosen)
        self._write_record()

    def _collect(self) -> None:
        """The conntrack collector, in its own thread: every ct_collect_interval, the
        entries whose flow is over are deleted (counted in xlb_conntrack_collected_total)."""
        while not self.stop.wait(self.cfg.ct_collect_interval):
            try:
                done = self.datapath.collect_conntrack()
            except Exception as exc:  # the next pass tries again; LRU still bounds the table
                log.warning("conntrack collector: %s", exc)
                continue
            self.metrics.ct_collected.inc(done.deleted)
            self.metrics.ct_scans.observe(done.seconds)
            self.metrics.ct_scanned.set(done.scanned)
            if done.deleted:
                log.debug("conntrack: %d of %d entries were over (%.0f ms)", done.deleted,
                          done.scanned, done.seconds * 1000)  # fmt: skip

    def _reconcile_udp(self) -> None:
        """Resets connected UDP sockets pointed at backends the syncs removed (or marked not
        serving), in its own thread: entering namespaces never delays a sync. What it cannot
        reach (no CAP_SYS_ADMIN, or no view of the pods' processes) is counted and said once."""
        while not self.stop.is_set():
            try:
                gone = self.udp_gone.get(timeout=0.5)
            except queue.Empty:
                continue
            while not self.udp_gone.empty():  # a burst of syncs: one pass for all of them
                gone |= self.udp_gone.get_nowait()
            try:
                done = self.datapath.reconcile_udp(gone)
            except Exception as exc:  # the sockets stay; the next removal tries again
                log.warning("UDP socket reconciler: %s", exc)
                continue
            self.metrics.udp_reset.inc(done.destroyed)
            self.metrics.udp_unreset.inc(done.unreachable)
            self.metrics.udp_reconcile.observe(done.seconds)
            if done.destroyed:
                log.info("reset %d connected UDP sockets to removed backends", done.destroyed)
            if done.unreachable and not self.udp_unreachable_told:
                self.udp_unreachable_told = True
                log.warning(
                    "%d connected UDP sockets point at removed backends and could not be reset "
                    "(%s); they keep sending there until their application reconnects. Grant "
                    "CAP_SYS_ADMIN and hostPID to reset them, as kube-proxy clears conntrack",
                    done.unreachable,
                    "; ".join(done.errors[:3]) or "their network namespaces were not found",
                )

    def _elect_again(self) -> None:
        """An election between syncs; one that fails is retried by a full sync."""
        try:
            self._elect(self.cluster)
        except Exception:
            log.exception("election failed; retrying with the next sync")
            self.retry = True

    def _beat(self, every: float = 0.2) -> None:
        """The kernel answers ARP/NDP for our IPs while this process lives. Its own thread,
        because one sync of a large cluster may take longer than the kernel's grace (1 s)."""
        while True:
            try:
                self.datapath.heartbeat()
            except Exception as exc:  # retried in 0.2 s; past 1 s the node falls silent
                log.warning("heartbeat: %s; the kernel stops answering ARP/NDP after 1 s", exc)
            if self.stop.wait(every):
                return

    def warm(self) -> None:
        warm_neighbours(self.remote)
        self.last_warm = time.monotonic()

    def run(self, on_sync: Callable[[], None] | None = None) -> None:
        """Until stopped: a change (after the first complete view) waits out min_interval,
        so that a burst becomes one sync, then the datapath is synced to the latest view."""
        self.source.start()
        if hasattr(self.datapath, "collect_conntrack") and self.cfg.ct_collect_interval > 0:
            threading.Thread(target=self._collect, name="conntrack", daemon=True).start()
        if hasattr(self.datapath, "reconcile_udp"):
            threading.Thread(target=self._reconcile_udp, name="udp-reconciler", daemon=True).start()
        if self.members is not None:
            held = getattr(self.datapath, "held_lb_ips", None)
            self.announced = held() if held else set()  # before the heartbeat resumes
            self.members.set_meta("settling", "1")  # until it may take addresses over
            self.beat_thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self.beat_thread.start()
        try:
            while not self.stop.is_set():
                if (
                    self.members is not None
                    and self.syncs
                    and not self.settle_told
                    and self.members.settled()
                ):
                    # told once, also when the first election came after the settle (a slow
                    # start): `xlb lab` and operators wait for this line
                    self.settle_told = True
                    self.members.set_meta("settling", "0")
                    if self.settling:
                        self._elect_again()  # may take over addresses now
                    log.info("gossip settled: taking over LoadBalancer IPs")
                    self._write_record()
                if (
                    self.members is not None
                    and self.syncs
                    and self.members.alive() | self.members.skewed() != self.live
                ):
                    # someone joined, left or died: elect again at once, from the cluster
                    # of the last sync (nothing else changed, so no full sync unless
                    # endpoints on a node that died or came back must drain or return)
                    self._elect_again()
                    self.warm()  # and our uplink may have flapped, flushing neighbours
                elif (
                    self.members is not None
                    and self.syncs
                    and self.balancing
                    and self._published_holdings() != self.held_seen
                ):
                    self._elect_again()  # balanced placement starts from what others hold
                if (
                    self.members is not None
                    and self.syncs
                    and not self.isolated
                    and self.members.dead() != self.drained_for
                ):
                    # compared on every turn, not only when the election's view changes: a
                    # node back between a sync's drain and its election would leave its
                    # endpoints drained for good (seen in the lab under CI load)
                    self.retry = True
                if self.members is not None and self.syncs and self._xlb_nodes() != self.xlb_nodes:
                    self.retry = True  # DSR may reach another node's backends now, or no longer
                if self.allocator is not None and self.allocator.lease.leading != self.leading:
                    self.leading = not self.leading
                    self.retry = True  # became (or stopped being) the allocator
                if time.monotonic() - self.last_warm > self.cfg.neighbour_refresh:
                    self.warm()
                # a failed sync is retried with backoff; a new change is synced at once
                # (it may be the fix)
                backing_off = self.failures and time.monotonic() < self.next_try
                changed = self.source.ready and self.source.changed()
                if self.source.ready and (changed or (self.retry and not backing_off)):
                    self.health.queued()
                    wait = max(
                        self.cfg.min_interval - (time.monotonic() - self.last_sync),
                        self.cfg.min_interval if self.syncs else 0,
                    )
                    if wait > 0:
                        self.stop.wait(wait)
                    try:
                        self.retry = False
                        self.sync_once()
                        if self.failures:
                            log.info("sync succeeded after %d failures", self.failures)
                        self.failures = 0
                    except Exception as exc:  # one bad round must not stop the agent
                        self.failures += 1
                        self.metrics.sync_failures.inc()
                        delay = min(0.1 * 2**self.failures, 30.0)
                        self.next_try = time.monotonic() + delay
                        log.error(
                            "sync failed (%d in a row; next try in %.1f s); the datapath keeps "
                            "its last state: %s",
                            self.failures,
                            delay,
                            f"{type(exc).__name__}: {exc}",
                            exc_info=self.failures == 1,  # the traceback once, not every try
                        )
                        self.retry = True
                    if on_sync:
                        on_sync()
                self.source.wait(self.cfg.poll_interval)
        finally:
            self.source.stop()


def run_agent(cfg: AgentConfig, source, dp_cfg) -> int:
    """Loads and attaches the datapath, then keeps it in sync until SIGTERM/SIGINT."""
    from .datapath.node import NodeDatapath, ensure_sysctls

    for line in ensure_sysctls(dp_cfg.snat_ports):
        log.info("%s", line)
    datapath = NodeDatapath.load(
        dp_cfg,
        cfg.uplink,
        cfg.cgroup,
        native=cfg.native_xdp,
        preloaded=cfg.preloaded,
        devices=cfg.devices or [cfg.uplink],
    )
    members = announcer = None
    if cfg.gossip_key:
        from .l2.announce import Announcer
        from .l2.members import Members, MembersConfig

        bind = gossip_address(cfg.node_ips)
        members = Members(
            MembersConfig(
                cfg.node,
                bind,
                cfg.gossip_port,
                cfg.gossip_key,
                peers=dict(cfg.peers),
                meta={"uplink": cfg.uplink},
            )
        )
        members.start()
        announcer = Announcer(cfg.uplink, datapath.uplink_mac, refresh=cfg.l2_refresh)
    allocator = lease = None
    if cfg.lb_allocator and hasattr(source, "write_ingress"):
        from .l2.allocator import Allocator
        from .l2.lease import LeaseElector

        lease = LeaseElector(source.api_client, cfg.node)
        lease.start()
        allocator = Allocator(lease, source, cfg.node, cfg.lb_class)
    agent = Agent(
        cfg,
        source,
        datapath,
        Metrics(lambda: datapath.maps),
        members=members,
        announcer=announcer,
        allocator=allocator,
    )
    # serviceProxyHealthy is the proxy's own health, as /livez has it (kube-proxy's Health()):
    # a node being deleted still answers for its local endpoints
    agent.hc_ports = HealthCheckNodePorts(
        cfg.bind_address, lambda: agent.health.status(livez=True)[0] == 200
    )
    endpoints = Endpoints(
        agent.health,
        agent.metrics,
        cfg.bind_address,
        cfg.healthz_port,
        cfg.metrics_port,
        cfg.metrics_bind_address,
    )
    agent.publish = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    log.info("agent for node %s on %s (pid %d)", cfg.node, cfg.uplink, os.getpid())
    agent.run()
    if lease is not None:
        lease.stop()  # gives the Lease up: another node allocates at once
    if members is not None:
        # a rolling restart: silent first, then the others are told and take over at once,
        # so no address is answered by two nodes, nor by none for a probe timeout
        if agent.beat_thread is not None:
            agent.beat_thread.join(2)
        datapath.silence()
        members.leave()
    if announcer is not None:
        announcer.close()
    endpoints.close()
    agent.hc_ports.close()
    runstate.remove(cfg.pin_root)
    log.info("stopping; the datapath stays in place")
    return 0
