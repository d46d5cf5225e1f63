"""The HTTP endpoints existing tooling expects of a kube-proxy, served by the agent.

* `:10256/healthz`, `/livez`: kube-proxy's JSON body (lastUpdated, currentTime, nodeEligible);
  200 while no queued update is older than the health timeout, 503 otherwise and before the
  first sync.
* `:10249/metrics` (Prometheus): kube-proxy's names where the meaning is the same, and xlb's
  per-frontend and per-reason counters read from the maps at scrape time; `/proxyMode`.
* One server per healthCheckNodePort (externalTrafficPolicy Local LoadBalancer Services):
  kube-proxy's JSON body, 200 while this node has a local endpoint, 503 otherwise, so that
  cloud and MetalLB health checks send traffic only to nodes that can serve it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .model.objects import Node
from .model.state import HealthCheck

log = logging.getLogger("xlb.serve")

PROXY_MODE = "xlb"

# what a handler answers: code, content type, body, and optionally more headers
Answer = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Health:
    """When the datapath was last brought up to date, and how long an update has waited."""

    def __init__(
        self,
        timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        source_errors: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.timeout, self.clock, self.source_errors = timeout, clock, source_errors
        self.last_updated = 0.0
        self.queued_since: float | None = None
        self.lock = threading.Lock()
        # this node as the API has it: eligible unless it is being deleted (deletionTimestamp,
        # or the cluster autoscaler's ToBeDeletedByClusterAutoscaler taint) or, once seen,
        # gone; before it is first seen (start-up, or a run without a Node) it counts eligible
        self.node_seen = False
        self.node_eligible = True

    def queued(self) -> None:
        with self.lock:
            if self.queued_since is None:
                self.queued_since = self.clock()

    def updated(self) -> None:
        with self.lock:
            self.last_updated, self.queued_since = self.clock(), None

    def node(self, node: Node | None) -> None:
        """This node's object after a sync (None: not in the cluster)."""
        with self.lock:
            if node is None:
                self.node_eligible = not self.node_seen
                return
            self.node_seen = True
            self.node_eligible = not node.to_be_deleted

    def status(self, livez: bool = False) -> tuple[int, dict[str, Any]]:
        """kube-proxy's /healthz (livez: /livez, which leaves the node's eligibility out):
        503 before the first sync (kube-proxy answers 200 then; a node whose datapath is not
        programmed yet should get no traffic), while an update has waited over the timeout,
        and, for /healthz, while the node is being deleted, so that load balancers drain it."""
        with self.lock:
            now = self.clock()
            healthy = self.last_updated > 0 and (
                self.queued_since is None or now - self.queued_since < self.timeout
            )
            # "lastUpdated" is now while healthy, as kube-proxy keeps it for old readers
            body: dict[str, Any] = {
                "lastUpdated": _iso(now if healthy else self.last_updated),
                "currentTime": _iso(now),
                "healthy": healthy,
            }
            if not livez:
                body["nodeEligible"] = self.node_eligible
                healthy = healthy and self.node_eligible
        # beside kube-proxy's fields: why no update may be coming (the datapath still serves
        # its last state, so this alone does not make the node unhealthy)
        errors = self.source_errors()
        if errors:
            body["sourceErrors"] = errors
        return (200 if healthy else 503), body


class Metrics:
    """The agent's Prometheus registry."""

    def __init__(self, maps_fn: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry()
        buckets = tuple(0.001 * 2**i for i in range(15))
        # kube-proxy's names, with its ip_family label (1.33+): one xlb sync programs both
        # families, so it is observed once for each family the node serves
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            ["ip_family"],
            buckets=buckets,
            registry=self.registry,
        )
        self.sync_failures = PromCounter(
            "xlb_sync_failures",
            "Syncs that failed (the datapath kept its last state; retried with backoff)",
            registry=self.registry,
        )
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            ["ip_family"],
            registry=self.registry,
        )
        self.programming = Histogram(  # ip_family: the EndpointSlice's address type
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            ["ip_family"],
            buckets=tuple(0.25 * 2**i for i in range(12)),
            registry=self.registry,
        )
        self.frontends = Gauge(
            "xlb_frontends", "Frontends programmed on this node", registry=self.registry
        )
        self.ct_collected = PromCounter(
            "xlb_conntrack_collected",
            "Conntrack entries deleted by the collector because their flow was over",
            registry=self.registry,
        )
        self.ct_scans = Histogram(
            "xlb_conntrack_collect_duration_seconds",
            "How long one pass of the conntrack collector took",
            buckets=buckets,
            registry=self.registry,
        )
        self.ct_scanned = Gauge(
            "xlb_conntrack_entries",
            "Conntrack entries at the collector's last pass (two per flow)",
            registry=self.registry,
        )
        # kube-proxy's conntrack reconciler clears UDP flows to removed endpoints; xlb's
        # connected UDP sockets hold their backend themselves, and are reset instead
        self.udp_reset = PromCounter(
            "xlb_udp_sockets_reset",
            "Connected UDP sockets reset because their backend was removed or stopped serving",
            registry=self.registry,
        )
        self.udp_unreset = PromCounter(
            "xlb_udp_sockets_unreset",
            "Connected UDP sockets to a removed backend this agent could not reset (no way "
            "into their network namespace: CAP_SYS_ADMIN and a view of the host's processes)",
            registry=self.registry,
        )
        self.udp_reconcile = Histogram(
            "xlb_udp_reconciler_sync_duration_seconds",
            "How long one reset of stale connected UDP sockets took",
            buckets=buckets,
            registry=self.registry,
        )
        self.announcers = Gauge(
            "xlb_lb_ip_announcer",
            "1 for the node that announces each LoadBalancer IP on the LAN, cluster-wide (as "
            "this node's election, from the gossip, computes it)",
            ["ip", "node"],
            registry=self.registry,
        )
        self._announced: dict[str, str] = {}
        self.maps_fn = maps_fn
        if maps_fn is not None:
            self.registry.register(_MapsCollector(maps_fn))
        self._seen_triggers: set[tuple[str, str]] = set()

    def announcing(self, chosen: dict[str, str]) -> None:
        """The election's answer for every LoadBalancer IP: ip -> announcing node."""
        for ip, node in self._announced.items():
            if chosen.get(ip) != node:
                self.announcers.remove(ip, node)
        for ip, node in chosen.items():
            self.announcers.labels(ip, node).set(1)
        self._announced = dict(chosen)

    def synced(
        self, seconds: float, frontends: int, slices: list, families: tuple[str, ...] = ("IPv4",)
    ) -> None:
        for family in families:
            self.sync_duration.labels(family).observe(seconds)
            self.last_sync.labels(family).set_to_current_time()
        self.frontends.set(frontends)
        now = time.time()
        seen = set()
        for sl in slices:
            if not sl.trigger_time:
                continue
            key = (f"{sl.namespace}/{sl.name}", sl.trigger_time)
            seen.add(key)
            if key not in self._seen_triggers:
                try:
                    t = dt.datetime.fromisoformat(sl.trigger_time.replace("Z", "+00:00"))
                except ValueError:
                    continue
                family = sl.address_type if sl.address_type in ("IPv4", "IPv6") else "IPv4"
                self.programming.labels(family).observe(max(0.0, now - t.timestamp()))
        self._seen_triggers = seen


class _MapsCollector:
    """Per-frontend and per-reason counters, summed over CPUs, at scrape time."""

    def __init__(self, maps_fn: Callable[[], Any]) -> None:
        self.maps_fn = maps_fn
        # frontend -> (time, new flows) at the last scrape: the rate gauge is the average
        # since then
        self._last: dict[tuple, tuple[float, int]] = {}

    def collect(self):
        maps = self.maps_fn()
        if maps is None:
            return
        labels = ["frontend", "protocol", "scope"]
        fams = {
            f: CounterMetricFamily(f"xlb_frontend_{f}", f"Per frontend: {f}", labels=labels)
            for f in ("packets", "bytes", "new_flows", "drops")
        }
        rate = GaugeMetricFamily(
            "xlb_frontend_new_flows_per_second",
            "Per frontend: new flows a second, on average since the previous scrape",
            labels=labels,
        )
        now, seen = time.monotonic(), {}
        for (address, port, proto, scope), v in maps.read_services().items():
            frontend = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            label = [frontend, str(proto), str(scope)]
            counts = maps.svc_counts(v.id)
            for field, value in counts.items():
                fams[field].add_metric(label, value)
            key = tuple(label)
            seen[key] = (now, counts["new_flows"])
            if key in self._last and now > self._last[key][0]:
                then, flows = self._last[key]
                rate.add_metric(label, max(0, counts["new_flows"] - flows) / (now - then))
        self._last = seen
        yield from fams.values()
        yield rate
        reasons = CounterMetricFamily(
            "xlb_packets_not_balanced",
            "Packets the datapath did not balance, by reason",
            labels=["reason"],
        )
        for reason, value in maps.reason_counts().items():
            reasons.add_metric([reason], value)
        yield reasons


class _Server:
    """A small threaded HTTP server for one handler function, that no caller can exhaust:
    every connection has a deadline (an idle or slow one is closed after IDLE_TIMEOUT), at
    most PER_SOURCE connections from one address and MAX_CONNECTIONS in all are served at
    once (others are closed at once, counted in `refused`), the listen backlog is deep, and
    a handler's failure answers 500 without its text (it is logged)."""

    IDLE_TIMEOUT = 5.0
    MAX_CONNECTIONS = 128
    PER_SOURCE = 16

    def __init__(self, address: str, port: int, handle: Callable[[str], Answer]) -> None:
        server = self
        self.refused = 0
        self.active: Counter = Counter()
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            timeout = _Server.IDLE_TIMEOUT  # socketserver sets it on the connection

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    code, ctype, body, *more = handle(self.path.split("?")[0])
                except Exception:  # never the exception's text to an unauthenticated caller
                    log.exception("serving %s failed", self.path)
                    code, ctype, body = _json(500, {"error": "internal error; see the agent's log"})
                    more = []
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                for name, value in (more[0] if more else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        class Http(ThreadingHTTPServer):
            # an IPv6 address (an IPv6-only node's --bind-address, or "::") needs an IPv6
            # socket; "::" also takes IPv4 (net.ipv6.bindv6only is 0 unless set)
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            daemon_threads = True
            request_queue_size = 1024  # a flood of connects must not fill the SYN backlog

            def process_request(self, request, client_address) -> None:
                source = client_address[0]
                with server.lock:
                    busy = sum(server.active.values()) >= server.MAX_CONNECTIONS
                    if busy or server.active[source] >= server.PER_SOURCE:
                        server.refused += 1
                        self.shutdown_request(request)
                        return
                    server.active[source] += 1
                super().process_request(request, client_address)

            def process_request_thread(self, request, client_address) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    with server.lock:
                        server.active[client_address[0]] -= 1
                        if server.active[client_address[0]] <= 0:
                            del server.active[client_address[0]]

            def handle_error(self, request, client_address) -> None:
                pass  # a peer that went away or timed out: nothing to report

        self.http = Http((address, port), Handler)
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _json(code: int, body: Any) -> tuple[int, str, bytes]:
    return code, "application/json", json.dumps(body).encode()


class Endpoints:
    """healthz on one port, metrics and proxyMode on another; either can be off (port -1)."""

    def __init__(
        self,
        health: Health,
        metrics: Metrics,
        address: str = "0.0.0.0",
        healthz_port: int = 10256,
        metrics_port: int = 10249,
        metrics_address: str | None = None,  # default: address
    ) -> None:
        self.health, self.metrics = health, metrics
        self.servers: list[_Server] = []
        if healthz_port >= 0:
            self.healthz = _Server(address, healthz_port, self._healthz)
            self.servers.append(self.healthz)
        if metrics_port >= 0:
            where = address if metrics_address is None else metrics_address
            self.metrics_server = _Server(where, metrics_port, self._metrics)
            self.servers.append(self.metrics_server)

    def _healthz(self, path: str) -> tuple[int, str, bytes]:
        if path not in ("/healthz", "/livez"):
            return _json(404, {"error": f"no {path} here: try /healthz or /livez"})
        return _json(*self.health.status(livez=path == "/livez"))

    def _metrics(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/proxyMode":
            return 200, "text/plain; charset=utf-8", PROXY_MODE.encode()
        return _json(404, {"error": f"no {path} here: try /metrics or /proxyMode"})

    def close(self) -> None:
        for s in self.servers:
            s.close()


class HealthCheckNodePorts:
    """One server per healthCheckNodePort, following the desired state."""

    def __init__(self, address: str = "0.0.0.0", proxy_healthy: Callable[[], bool] = lambda: True):
        self.address, self.proxy_healthy = address, proxy_healthy
        self.servers: dict[int, _Server] = {}
        self.checks: dict[int, HealthCheck] = {}
        self.errors: dict[int, str] = {}

    def _handler(self, port: int) -> Callable[[str], Answer]:
        def handle(_path: str) -> Answer:
            hc = self.checks[port]
            ns, name = hc.service.split("/", 1)
            healthy = self.proxy_healthy()
            ok = hc.local_endpoints > 0 and healthy
            code, ctype, body = _json(
                200 if ok else 503,
                {
                    "service": {"namespace": ns, "name": name},
                    "localEndpoints": hc.local_endpoints,
                    "serviceProxyHealthy": healthy,
                },
            )
            # read by weighted-Maglev cloud load balancers (kube-proxy sends it since 1.28)
            return code, ctype, body, {"X-Load-Balancing-Endpoint-Weight": str(hc.local_endpoints)}

        return handle

    def sync(self, checks: list[HealthCheck]) -> list[str]:
        """Starts, updates and stops servers; returns a line per port that could not open."""
        wanted = {hc.port: hc for hc in checks}
        for port in [p for p in self.servers if p not in wanted]:
            self.servers.pop(port).close()
        self.checks = wanted
        problems = []
        for port in wanted:
            if port in self.servers:
                continue
            try:
                self.servers[port] = _Server(self.address, port, self._handler(port))
                self.errors.pop(port, None)
            except OSError as exc:
                msg = (
                    f"healthCheckNodePort {port} of Service {wanted[port].service}: "
                    f"{exc.strerror}; is another proxy (kube-proxy?) still running?"
                )
                if self.errors.get(port) != msg:
                    problems.append(msg)
                self.errors[port] = msg
        return problems

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.servers.clear()
