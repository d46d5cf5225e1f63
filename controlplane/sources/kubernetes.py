"""The Kubernetes API as a source: list+watch of Services, EndpointSlices (or Endpoints) and
Nodes with the official client.

One reflector thread per resource lists, then watches from the list's resourceVersion (with
bookmarks); a watch that ends is resumed from the last version seen; `410 Gone` means the
version was compacted away, so it lists again; any other error backs off (exponential, with
jitter) and retries. The store keeps the last state through all of it: an unreachable API
server never empties the datapath. Objects are parsed once per version, on arrival.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model.diagnostics import Diagnostic
from ..model.objects import LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME
from ..model.parse import (
    parse_endpoint_slice,
    parse_endpoints,
    parse_node,
    parse_service,
    parse_service_cidr,
)
from ..model.snapshot import Changes, Cluster, new_lineage

log = logging.getLogger("xlb.kubernetes")


class Gone(Exception):
    """The watch's resourceVersion is older than the server keeps: list again."""


@dataclass
class Entry:
    version: str
    parsed: list[Any]
    diagnostics: list[Diagnostic]


def _parse(kind: str, obj: dict) -> tuple[list[Any], list[Diagnostic]]:
    if kind in ("IPAddressPool", "L2Advertisement"):
        from ..model.pools import parse_advertisement, parse_pool

        item, d = (parse_pool if kind == "IPAddressPool" else parse_advertisement)(obj)
        return ([item] if item else []), d
    if kind == "Service":
        svc, d = parse_service(obj)
        return ([svc] if svc else []), d
    if kind == "EndpointSlice":
        sl, d = parse_endpoint_slice(obj)
        return ([sl] if sl else []), d
    if kind == "Endpoints":
        return parse_endpoints(obj)
    if kind == "ServiceCIDR":
        return parse_service_cidr(obj)
    node, d = parse_node(obj)
    return ([node] if node else []), d


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


SERVICE_KINDS = ("Service", "EndpointSlice", "Endpoints")  # what the translator reads


def _services_of(kind: str, key: tuple[str, str], entry: Entry | None) -> set[str]:
    """The Services (namespace/name) an object's version belongs to: a Service and an
    Endpoints object are their own; a slice is its Service's (by its label, as parsed)."""
    if kind == "EndpointSlice":
        return {sl.service_key for sl in entry.parsed} if entry is not None else set()
    return {f"{key[0]}/{key[1]}"}


@dataclass
class Store:
    """The latest version of every object, parsed, and a generation that moves on change;
    the Services changed since the last snapshot are carried by key (pending), as
    kube-proxy's change trackers carry them from the watch to the sync."""

    kinds: tuple[str, ...]
    cond: threading.Condition = field(default_factory=threading.Condition)
    entries: dict[str, dict[tuple[str, str], Entry]] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    lineage: int = field(default_factory=new_lineage)
    pending: set[str] = field(default_factory=set)  # Services changed since the last snapshot
    taken: int = -1  # the generation of the last snapshot

    def __post_init__(self) -> None:
        self.entries = {k: {} for k in self.kinds}

    def _changed(self, kind: str, key: tuple[str, str], *entries: Entry | None) -> None:
        if kind in SERVICE_KINDS:
            for entry in entries:
                self.pending |= _services_of(kind, key, entry)

    def _put(self, kind: str, obj: dict) -> bool:
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        key = _key(obj)
        old = self.entries[kind].get(key)
        if old is not None and old.version == version and version:
            return False
        parsed, diags = _parse(kind, obj)
        new = self.entries[kind][key] = Entry(version, parsed, diags)
        self._changed(kind, key, old, new)
        return True

    def _drop(self, kind: str, key: tuple[str, str]) -> bool:
        old = self.entries[kind].pop(key, None)
        self._changed(kind, key, old)
        return old is not None

    def replace(self, kind: str, items: list[dict]) -> None:
        """A fresh list: what it lacks was deleted while we were not watching."""
        with self.cond:
            keys = {_key(o) for o in items}
            changed = False
            for k in [k for k in self.entries[kind] if k not in keys]:
                changed |= self._drop(kind, k)
            for obj in items:
                changed |= self._put(kind, obj)
            self.synced.add(kind)
            self.errors.pop(kind, None)
            if changed:
                self.generation += 1
            self.cond.notify_all()

    def event(self, kind: str, etype: str, obj: dict) -> None:
        with self.cond:
            drop = etype == "DELETED"
            changed = self._drop(kind, _key(obj)) if drop else self._put(kind, obj)
            if changed:
                self.generation += 1
                self.cond.notify_all()

    def error(self, kind: str, message: str) -> None:
        with self.cond:
            self.errors[kind] = message

    def reachable(self, kind: str) -> None:
        with self.cond:
            self.errors.pop(kind, None)

    @property
    def ready(self) -> bool:
        """Every resource listed at least once (the first sync waits for all of them)."""
        return self.synced >= set(self.kinds)

    def cluster(self, pools: list | None = None) -> Cluster:
        """The snapshot, and the Services changed since the last one (which it takes: the
        next snapshot carries those after it)."""
        with self.cond:
            changes = Changes(self.lineage, self.taken, self.generation, frozenset(self.pending))
            self.pending, self.taken = set(), self.generation
            c = Cluster(pools=list(pools or []), changes=changes)
            if self.entries.get("L2Advertisement"):
                c.advertisements = []
            for kind, entries in self.entries.items():
                for entry in entries.values():
                    c.diagnostics += entry.diagnostics
                    target = {
                        "Service": c.services,
                        "Node": c.nodes,
                        "IPAddressPool": c.pools,
                        "L2Advertisement": c.advertisements,
                        "ServiceCIDR": c.service_cidrs,
                    }.get(kind, c.slices)
                    target += entry.parsed
            return c


class Reflector(threading.Thread):
    """list, then watch from there, for one resource, until stopped."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        store: Store,
        selector: str = "",
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.2, 30.0),
        optional: bool = False,
    ) -> None:
        super().__init__(name=f"reflector-{kind}", daemon=True)
        self.kind, self.list_fn, self.store, self.selector = kind, list_fn, store, selector
        # optional: a resource whose CRD may not be installed, or that an older API server
        # does not serve; 404 means none of them (and the list is tried again every backoff
        # maximum, for a CRD installed later)
        self.optional = optional
        self.watch_timeout = watch_timeout
        self.backoff_min, self.backoff_max = backoff
        self.stopping = threading.Event()
        self.response: Any = None
        self.lists = 0

    def stop(self) -> None:
        self.stopping.set()
        resp = self.response
        if resp is not None:
            with contextlib.suppress(Exception):  # closing a dead connection may fail any way
                # a watch blocked on its next line wakes only when the socket is shut down
                # (close() alone waits for the server's next bookmark or the watch's end)
                resp.connection.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                resp.close()

    def _call(self, **kw: Any) -> Any:
        if self.selector:
            kw["label_selector"] = self.selector
        return self.list_fn(_preload_content=False, **kw)

    PAGE = 500  # items a list request asks for at most (kube-proxy's informers: 500)

    def _list(self) -> str:
        """Every object, in pages of PAGE (a list of 10,000 Services is not one response the
        server must build at once); a page token that expired midway starts the list anew."""
        for _ in range(3):
            items: list = []
            token = ""
            try:
                while True:
                    kw: dict[str, Any] = {"_request_timeout": 30, "limit": self.PAGE}
                    if token:
                        kw["_continue"] = token
                    body = json.loads(self._call(**kw).data)
                    items += body.get("items") or []
                    meta = body.get("metadata") or {}
                    token = meta.get("continue") or ""
                    if not token:
                        break
            except Exception as exc:
                if getattr(exc, "status", None) == 410 and token:
                    log.info("%s list: the page token expired; listing anew", self.kind)
                    continue
                raise
            self.lists += 1
            self.store.replace(self.kind, items)
            return str(meta["resourceVersion"])
        raise RuntimeError(f"{self.kind}: the list kept expiring between pages")

    def _watch(self, version: str) -> str:
        from kubernetes.watch.watch import iter_resp_lines

        self.response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=(10, self.watch_timeout + 30),
        )
        self.store.reachable(self.kind)
        try:
            for line in iter_resp_lines(self.response):
                if self.stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "Gone"))
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event["type"] != "BOOKMARK":
                    self.store.event(self.kind, event["type"], obj)
        finally:
            self.response.close()
            self.response = None
        return version

    def run(self) -> None:
        delay = self.backoff_min
        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    version = self._list()
                version = self._watch(version)  # ended: resume from where it was
                delay = self.backoff_min
            except Gone as exc:
                log.info("%s: %s; listing again", self.kind, exc)
                version = ""
            except Exception as exc:  # noqa: BLE001 (the API being away takes many shapes)
                if self.stopping.is_set():
                    break
                if self.optional and getattr(exc, "status", None) == 404:
                    if self.kind not in self.store.synced:
                        log.info("%s: not served (no CRD, or an older server): none", self.kind)
                    self.store.replace(self.kind, [])
                    version = ""
                    self.stopping.wait(self.backoff_max)
                    continue
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                self.store.error(self.kind, msg)
                log.warning(
                    "%s: %s; retrying in %.1fs; the datapath keeps its last state",
                    self.kind,
                    msg,
                    delay,
                )
                self.stopping.wait(delay * (0.5 + random.random()))  # jitter: no herd
                delay = min(delay * 2, self.backoff_max)


class KubernetesSource:
    """The agent's view of the cluster from the API server."""

    def __init__(
        self,
        api_client: Any,
        endpoints_api: str = "endpointslices",
        proxy_name: str = "",
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.2, 30.0),
        pools: list | None = None,
    ) -> None:
        from functools import partial

        from kubernetes import client

        core, discovery = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        self.core, self.api_client = core, api_client
        self.pools = list(pools or [])  # from xlb's own config, beside any IPAddressPool
        endpoints_kind = "EndpointSlice" if endpoints_api == "endpointslices" else "Endpoints"
        self.store = Store(
            (
                "Service",
                endpoints_kind,
                "Node",
                "ServiceCIDR",
                "IPAddressPool",
                "L2Advertisement",
            )
        )
        self.event_queue: queue.Queue = queue.Queue(maxsize=self.EVENT_QUEUE)
        self.event_lock = threading.Lock()
        self.event_thread: threading.Thread | None = None
        self.events_dropped = 0
        # As kube-proxy: Services claimed by another proxy or labelled headless, and the
        # endpoints of headless Services, are not even fetched (a label added to a live
        # Service reaches the watch as its deletion).
        svc_selector = (
            f"{LABEL_SERVICE_PROXY_NAME}={proxy_name}"
            if proxy_name
            else f"!{LABEL_SERVICE_PROXY_NAME}"
        ) + f",!{LABEL_HEADLESS}"
        calls = {
            "Service": (core.list_service_for_all_namespaces, svc_selector),
            "EndpointSlice": (
                discovery.list_endpoint_slice_for_all_namespaces,
                f"!{LABEL_HEADLESS}",
            ),
            "Endpoints": (core.list_endpoints_for_all_namespaces, f"!{LABEL_HEADLESS}"),
            "Node": (core.list_node, ""),
            # the service ranges (GA in 1.33; a server before 1.31 serves none: 404)
            "ServiceCIDR": (client.NetworkingV1Api(api_client).list_service_cidr, ""),
            # MetalLB's configuration, read as it is, if its CRDs are installed
            "IPAddressPool": (
                partial(
                    custom.list_cluster_custom_object, "metallb.io", "v1beta1", "ipaddresspools"
                ),
                "",
            ),
            "L2Advertisement": (
                partial(
                    custom.list_cluster_custom_object, "metallb.io", "v1beta1", "l2advertisements"
                ),
                "",
            ),
        }
        self.reflectors = [
            Reflector(
                k,
                calls[k][0],
                self.store,
                selector=calls[k][1],
                watch_timeout=watch_timeout,
                backoff=backoff,
                optional=k in ("ServiceCIDR", "IPAddressPool", "L2Advertisement"),
            )
            for k in self.store.kinds
        ]
        self.seen_generation = -1

    def start(self) -> None:
        for r in self.reflectors:
            r.start()

    def stop(self) -> None:
        for r in self.reflectors:
            r.stop()
        for r in self.reflectors:
            r.join(5)
        if self.event_thread is not None:  # what is queued is sent first, for a while
            with contextlib.suppress(queue.Full):
                self.event_queue.put(None, timeout=1)
            self.event_thread.join(5)

    @property
    def ready(self) -> bool:
        return self.store.ready

    def changed(self) -> bool:
        """Whether there is news since the last snapshot (never before every list is in)."""
        return self.store.ready and self.store.generation != self.seen_generation

    def snapshot(self) -> Cluster:
        with self.store.cond:
            self.seen_generation = self.store.generation
            return self.store.cluster(self.pools)

    def wait(self, timeout: float) -> None:
        with self.store.cond:
            if self.store.generation == self.seen_generation:
                self.store.cond.wait(timeout)

    def health(self) -> dict[str, Any]:
        return {"synced": sorted(self.store.synced), "errors": dict(self.store.errors)}

    def report(self, diagnostic: Diagnostic, node: str) -> None:
        """A Warning Event on the Service a problem is about, for `kubectl describe` and
        `kubectl get events` to show where users look."""
        reason = "XlbNotProxied" if diagnostic.level == "info" else "XlbInvalidSpec"
        self.post_event(
            diagnostic.namespace, diagnostic.name, "Warning", reason, str_of(diagnostic), node
        )

    EVENT_QUEUE = 1000  # Events waiting to be sent; more are dropped (and counted)

    def post_event(
        self, namespace: str, name: str, type_: str, reason: str, message: str, node: str
    ) -> None:
        """An Event on a Service, queued for the sender thread: the sync never waits on the
        API server for one (best effort: the log has it too)."""
        with self.event_lock:
            if self.event_thread is None:
                self.event_thread = threading.Thread(
                    target=self._send_events, name="events", daemon=True
                )
                self.event_thread.start()
        try:
            self.event_queue.put_nowait((namespace, name, type_, reason, message, node))
        except queue.Full:
            self.events_dropped += 1

    def _send_events(self) -> None:
        while True:
            item = self.event_queue.get()
            if item is None:
                return
            self._send_event(*item)

    def _send_event(
        self, namespace: str, name: str, type_: str, reason: str, message: str, node: str
    ) -> None:
        from kubernetes import client

        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.xlb-", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Service", namespace=namespace, name=name
            ),
            reason=reason,
            type=type_,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            message=message[:1024],
            source=client.V1EventSource(component="xlb", host=node),
            reporting_component="xlb",
            reporting_instance=node,
        )
        try:
            self.core.create_namespaced_event(namespace, event, _request_timeout=5)
        except Exception as exc:  # noqa: BLE001 (an event is best effort; the log has it too)
            log.info(
                "could not post an event for %s/%s: %s",
                namespace,
                name,
                str(exc).splitlines()[0][:200],
            )

    def write_ingress(self, namespace: str, name: str, ips: tuple[str, ...]) -> None:
        """status.loadBalancer.ingress of a Service: these addresses (none: cleared). A
        merge patch of the status alone: nothing else of the Service is touched."""
        ingress = [{"ip": ip, "ipMode": "VIP"} for ip in ips]
        self.core.patch_namespaced_service_status(
            name,
            namespace,
            {"status": {"loadBalancer": {"ingress": ingress or None}}},
            _content_type="application/merge-patch+json",
            _request_timeout=5,
        )


def str_of(diagnostic: Diagnostic) -> str:
    if diagnostic.field:
        return f"{diagnostic.field}: {diagnostic.message}"
    return diagnostic.message


def api_client(kubeconfig: str | None = None) -> Any:
    """The kubeconfig given; else in a pod the service account (the API server's address from
    KUBERNETES_SERVICE_HOST/PORT, which the DaemonSet sets to the server itself: xlb is what
    implements the kubernetes Service); else KUBECONFIG or ~/.kube/config. Raises SystemExit
    with what to do when none is usable."""
    from kubernetes import client, config

    if kubeconfig:
        try:
            config.load_kube_config(config_file=kubeconfig)
        except (OSError, config.ConfigException) as exc:
            raise SystemExit(f"xlb agent: --kubeconfig {kubeconfig}: {exc}") from None
        return client.ApiClient()
    in_pod = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException as exc:
        if in_pod:
            raise SystemExit(
                f"xlb agent: cannot reach the API server from this pod ({exc}): set XLB_API_HOST "
                "and XLB_API_PORT in ConfigMap kube-system/xlb-config to the API server's "
                "address (not the kubernetes Service's: xlb implements it)"
            ) from None
    try:
        config.load_kube_config()
    except (OSError, config.ConfigException) as exc:
        raise SystemExit(
            f"xlb agent: no Kubernetes credentials ({exc}): run in a pod, or give --kubeconfig"
        ) from None
    return client.ApiClient()
