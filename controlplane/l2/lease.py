"""Exactly one LoadBalancer IP allocator in the cluster: leader election on a Lease.

The algorithm of client-go's leaderelection, on a coordination.k8s.io/v1 Lease: the holder
renews it every `retry` seconds; another agent takes it over only after it has seen the same
record unchanged for `duration` seconds (measured on its own monotonic clock, so clocks that
disagree between nodes do not matter); every write carries the resourceVersion it read, so
of two agents racing for a free Lease exactly one wins (the other gets 409 Conflict). A
leader that has not renewed for `renew_deadline` (< duration) stops acting as one before
anybody else may start. On a clean stop the holder gives the Lease up, so the next one takes
over at once instead of after `duration`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger("xlb.lease")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api_client: Any,
        identity: str,
        namespace: str = "kube-system",
        name: str = "xlb-lb-allocator",
        duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry: float = 2.0,
    ) -> None:
        from kubernetes import client

        if not retry < renew_deadline < duration:
            raise ValueError("lease timings: retry < renew deadline < duration")
        self.api = client.CoordinationV1Api(api_client)
        self.identity, self.namespace, self.name = identity, namespace, name
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.renewed = -1e9  # monotonic time of our last successful write
        self.observed: tuple = ()  # the other holder's record, and since when we see it
        self.observed_at = 0.0
        self.transitions = 0  # times leadership was gained
        self.error = ""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease", daemon=True)

    @property
    def leading(self) -> bool:
        return time.monotonic() - self.renewed < self.renew_deadline

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        if self.leading:
            self.renewed = -1e9
            with contextlib.suppress(Exception):  # best effort: else it expires by itself
                self._write(self._read(), release=True)
                log.info("gave up lease %s/%s", self.namespace, self.name)

    def _run(self) -> None:
        while not self.stopping.is_set():
            was = self.leading
            try:
                self.try_acquire_or_renew()
                self.error = ""
            except Exception as exc:  # noqa: BLE001 (the API being away takes many shapes)
                self.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if self.leading and not was:
                self.transitions += 1
                log.info("leading: this node allocates LoadBalancer IPs (lease %s)", self.name)
            elif was and not self.leading:
                log.warning("lost lease %s: no longer allocating (%s)", self.name, self.error)
            self.stopping.wait(self.retry)

    def _read(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=5
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def _write(self, lease: dict | None, release: bool = False) -> bool:
        from kubernetes.client.exceptions import ApiException

        spec = dict((lease or {}).get("spec") or {})
        now = _now()
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (lease is not None)
        spec.update(
            holderIdentity="" if release else self.identity,
            leaseDurationSeconds=1 if release else max(1, round(self.duration)),
            renewTime=now,
        )
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        try:
            if lease is None:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=5)
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                self.api.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=5
                )
        except ApiException as exc:
            if exc.status in (409, 422):  # someone else wrote first: we lost this round
                return False
            raise
        return True

    def try_acquire_or_renew(self) -> bool:
        """One round: renew ours, take a free or expired one, or note who holds it."""
        start = time.monotonic()
        lease = self._read()
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if lease is not None and holder and holder != self.identity:
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
            if record != self.observed:
                self.observed, self.observed_at = record, time.monotonic()
            expiry = float(spec.get("leaseDurationSeconds") or self.duration)
            if time.monotonic() - self.observed_at < expiry:
                self.renewed = min(self.renewed, -1e9)
                return False  # held, and renewed within its duration as far as we can see
        if self._write(lease):
            self.renewed = start  # counted from before the read: the conservative side
            return True
        return False

    @property
    def holder(self) -> str:
        return self.identity if self.leading else (self.observed[0] if self.observed else "")
