"""The cluster's LoadBalancer IP allocator: on the Lease holder only, the pools' allocation
(model.pools.allocate) is written to each Service's status.loadBalancer.ingress, with an Event.

Every agent announces what the Services' status says; only this writes it, so exactly one
allocator acts at a time however many agents run. A Service that cannot get an address gets
one Warning Event saying why (posted again only if the reason changes).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ..model.diagnostics import Diagnostic, Level
from ..model.pools import allocate, status_changes
from ..model.snapshot import Cluster

log = logging.getLogger("xlb.allocator")


class Writer(Protocol):
    def write_ingress(self, namespace: str, name: str, ips: tuple[str, ...]) -> None: ...

    def post_event(
        self, namespace: str, name: str, type_: str, reason: str, message: str, node: str
    ) -> None: ...


class Allocator:
    def __init__(self, lease: Any, writer: Writer, node: str, lb_class: str = "") -> None:
        self.lease, self.writer, self.node, self.lb_class = lease, writer, node, lb_class
        # what we wrote lately: the watch brings it back a little later, and until then
        # the next sync must not write (and announce) it again
        self.written: dict[str, tuple[tuple[str, ...], float]] = {}
        self.reported: set[Diagnostic] = set()
        self.writes = 0
        self.done: Cluster | None = None  # the cluster of the last round that ended

    def sync(self, cluster: Cluster) -> list[Diagnostic]:
        """One round, if this node holds the lease and any pool exists; the problems."""
        try:
            return self._round(cluster)
        finally:
            self.done = cluster

    def _round(self, cluster: Cluster) -> list[Diagnostic]:
        if not self.lease.leading or not cluster.pools:
            return []
        current = {s.key: s.ingress_ips for s in cluster.services if s.ingress_ips}
        assigned, diags = allocate(cluster.services, cluster.pools, current, self.lb_class)
        now = time.monotonic()
        changes = status_changes(cluster.services, assigned, cluster.pools, self.lb_class)
        for key, ips in sorted(changes.items()):
            last = self.written.get(key)
            if last and last[0] == ips and now - last[1] < 10.0:
                continue
            namespace, name = key.split("/", 1)
            try:
                self.writer.write_ingress(namespace, name, ips)
            except Exception as exc:  # noqa: BLE001 (retried on the next sync)
                log.warning("could not write the status of %s: %s", key, exc)
                continue
            self.written[key] = (ips, now)
            self.writes += 1
            if ips:
                log.info("assigned %s to %s", ", ".join(ips), key)
                self.writer.post_event(
                    namespace, name, "Normal", "IPAllocated",
                    f"Assigned IP {list(ips)} (xlb on {self.node})", self.node,
                )  # fmt: skip
            else:
                log.info("released the addresses of %s", key)
                self.writer.post_event(
                    namespace, name, "Normal", "IPReleased",
                    "Released its LoadBalancer IPs: the Service is no longer a LoadBalancer "
                    "or its addresses are in no pool", self.node,
                )  # fmt: skip
        problems = [d for d in diags if d.level is not Level.INFO and d.kind == "Service"]
        for d in problems:
            if d not in self.reported:
                log.warning("%s", d)
                msg = f"{d.field}: {d.message}" if d.field else d.message
                self.writer.post_event(
                    d.namespace, d.name, "Warning", "AllocationFailed", msg, self.node
                )
        self.reported = set(problems)
        return diags
