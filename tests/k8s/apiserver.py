"""A local stand-in for kube-apiserver: the real list/watch HTTP protocol, nothing more.

No kube-apiserver can be installed on these machines, so tests drive the real `kubernetes`
client against this: JSON lists carrying a resourceVersion; chunked watch streams of ADDED,
MODIFIED, DELETED and BOOKMARK events from a resourceVersion; `410 Gone` for a version older
than the retained history; label selectors; and knobs for what real servers do to clients
(5xx answers, watches cut mid-stream, outages).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESOURCES = {
    "/api/v1/services": ("Service", "v1"),
    "/api/v1/endpoints": ("Endpoints", "v1"),
    "/api/v1/nodes": ("Node", "v1"),
    "/api/v1/namespaces": ("Namespace", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/apis/coordination.k8s.io/v1/leases": ("Lease", "coordination.k8s.io/v1"),
    "/apis/networking.k8s.io/v1/servicecidrs": ("ServiceCIDR", "networking.k8s.io/v1"),
    "/apis/metallb.io/v1beta1/ipaddresspools": ("IPAddressPool", "metallb.io/v1beta1"),
    "/apis/metallb.io/v1beta1/l2advertisements": ("L2Advertisement", "metallb.io/v1beta1"),
}
CLUSTER_SCOPED = {"/api/v1/nodes", "/api/v1/namespaces", "/apis/networking.k8s.io/v1/servicecidrs"}
CRDS = {"/apis/metallb.io/v1beta1/ipaddresspools", "/apis/metallb.io/v1beta1/l2advertisements"}


def route(path: str) -> tuple[str, str, str, str]:
    """A request path -> (collection, namespace, name, subresource); collection is the
    cluster-wide list path ("" if unknown)."""
    parts = path.strip("/").split("/")
    prefix = parts[:2] if parts[:1] == ["api"] else parts[:3]
    rest = parts[len(prefix) :]
    ns = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    if not rest:
        return "", ns, "", ""
    collection = "/" + "/".join([*prefix, rest[0]])
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return (collection if collection in RESOURCES else ""), ns, name, sub


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced whole, as for status ingress)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def selected(selector: str, etype: str, obj: dict, before: dict | None) -> dict | None:
    """What a watch with this label selector is sent for one change, as kube-apiserver's
    watch cache does (cacheWatcher.convertToWatchEvent): a MODIFIED that brings the object
    into the selector is ADDED, one that takes it out is DELETED (the object as it was, at
    the new resourceVersion), one outside before and after is nothing."""

    def ok(o: dict | None) -> bool:
        return o is not None and matches(selector, o["metadata"].get("labels") or {})

    now = ok(obj)
    if etype != "MODIFIED":
        return {"type": etype, "object": obj} if now else None
    was = ok(before)
    if now and was:
        return {"type": "MODIFIED", "object": obj}
    if now:
        return {"type": "ADDED", "object": obj}
    if was:
        gone = json.loads(json.dumps(before))
        gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
        return {"type": "DELETED", "object": gone}
    return None


def matches(selector: str, labels: dict[str, str]) -> bool:
    """The equality-based label selector grammar: k, !k, k=v, k==v, k!=v (comma = and)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


class ApiServer:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in RESOURCES}
        # (rv, path, type, object, the object before a MODIFIED): a watch with a label
        # selector needs both, to turn a change across the selector into ADDED or DELETED
        self.history: list[tuple[int, str, str, dict, dict | None]] = []
        self.oldest = 0  # history below this resourceVersion has been compacted away
        self.fail_next = 0  # answer this many requests with 500
        self.down = False  # refuse every request (connection closed at once)
        self.refused = 0  # requests refused while down
        self.epoch = 0  # bumped to cut every open watch
        self.requests: Counter = Counter()  # (path, "list" | "watch")
        self.bookmark_every = 1.0
        self.events: list[dict] = []  # v1 Events created by clients
        self.event_delay = 0.0  # seconds each Event's creation takes (a slow server)
        self.pages = 0  # list responses served (a paginated list is several)
        self.compact_at_page = 0  # after serving this page, compact: its token expires
        self.crds = True  # MetalLB's CRDs installed (else their paths answer 404)
        self.service_cidr_api = True  # networking.k8s.io/v1 ServiceCIDRs served (1.33+)
        self.writes: Counter = Counter()  # (method, collection, subresource) from clients
        # as every cluster has them; kube-system's uid is the cluster's identity (the agents'
        # default hash seed)
        for name in ("default", "kube-system"):
            self.objects["/api/v1/namespaces"][("", name)] = {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
                "status": {"phase": "Active"},
            }  # fmt: skip
        # kube-apiserver (1.33+) makes the default ServiceCIDR from --service-cluster-ip-range
        self.objects["/apis/networking.k8s.io/v1/servicecidrs"][("", "kubernetes")] = {
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes", "uid": str(uuid.uuid4()), "resourceVersion": "1"},
            "spec": {"cidrs": ["10.96.0.0/12"]},
        }  # fmt: skip
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

            def do_POST(self) -> None:
                server.create(self)

            def do_PUT(self) -> None:
                server.update(self, patch=False)

            def do_PATCH(self) -> None:
                server.update(self, patch=True)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def write_kubeconfig(self, path) -> str:
        """A kubeconfig for this server at path (for a real client in another process)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
            "users": [{"name": "t", "user": {}}],
        }  # fmt: skip
        with open(path, "w") as f:
            json.dump(config, f)
        return str(path)

    def close(self) -> None:
        self.down = True
        self.cut_watches()
        self.http.shutdown()
        self.http.server_close()

    # -- what tests do to the cluster ------------------------------------------------------------

    def _write(self, path: str, kind: str, obj: dict) -> dict:
        with self.cond:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            meta = obj.setdefault("metadata", {})
            if path not in CLUSTER_SCOPED:
                meta.setdefault("namespace", "default")
            meta["resourceVersion"] = str(self.rv)
            key = (meta.get("namespace", ""), meta["name"])
            etype = "MODIFIED" if key in self.objects[path] else "ADDED"
            prev = self.objects[path].get(key) if etype == "MODIFIED" else None
            if kind == "DELETED":
                etype = "DELETED"
                self.objects[path].pop(key, None)
            else:
                self.objects[path][key] = obj
            self.history.append((self.rv, path, etype, obj, prev))
            self.cond.notify_all()
            return obj

    def apply(self, obj: dict) -> dict:
        path = next(p for p, (k, _) in RESOURCES.items() if k == obj["kind"])
        return self._write(path, obj["kind"], obj)

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        path = next(p for p, (k, _) in RESOURCES.items() if k == kind)
        key = ("" if path in CLUSTER_SCOPED else namespace, name)
        obj = self.objects[path].get(key)
        if obj is not None:
            self._write(path, "DELETED", obj)

    def compact(self) -> None:
        """Forget all history, as etcd compaction does, and cut the watches: clients that
        come back with an old resourceVersion get 410 Gone and must list again."""
        with self.cond:
            self.oldest = self.rv + 1
            self.history.clear()
        self.cut_watches()

    def cut_watches(self) -> None:
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    # -- the protocol ------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        watch = q.get("watch") in ("true", "1")
        if self.down:
            self.refused += 1
            h.close_connection = True
            h.connection.close()
            return
        collection, ns, name, _ = route(url.path)
        if (
            not collection
            or (collection in CRDS and not self.crds)
            or (collection.endswith("/servicecidrs") and not self.service_cidr_api)
        ):
            return self._status(h, 404, "NotFound", f"{url.path} is not served here")
        if name:
            with self.cond:
                obj = self.objects[collection].get((ns, name))
            if obj is None:
                return self._status(h, 404, "NotFound", f"{name} not found")
            return self._json(h, 200, obj)
        if ns:
            return self._status(h, 404, "NotFound", "namespaced lists are not served here")
        self.requests[(url.path, "watch" if watch else "list")] += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return self._status(h, 500, "InternalError", "injected failure")
        kind, api_version = RESOURCES[url.path]
        selector = q.get("labelSelector", "")
        if not watch:
            return self._list(h, url.path, kind, api_version, q, selector)
        self._watch(h, url.path, kind, api_version, q, selector)

    def _list(self, h, path, kind, api_version, q, selector) -> None:
        """A list, in pages when the client asks (`limit`), as kube-apiserver serves them:
        items in key order, `metadata.continue` an opaque token naming the list's
        resourceVersion and the last key, `remainingItemCount`; a token older than the
        retained history is `410 Gone` (ResourceExpired), and the client lists anew."""
        limit = int(q.get("limit") or 0)
        token = q.get("continue", "")
        with self.cond:
            rv, after = self.rv, None
            if token:
                try:
                    rv, after = json.loads(base64.urlsafe_b64decode(token.encode()))
                except ValueError:
                    return self._status(h, 400, "BadRequest", "invalid continue token")
                if rv < self.oldest:
                    return self._status(
                        h, 410, "Expired", "The provided continue parameter is too old "
                        "to display a consistent list result. You can start a new list "
                        "without the continue parameter.",
                    )  # fmt: skip
            items = sorted(
                (
                    (f"{key[0]}/{key[1]}", o)
                    for key, o in self.objects[path].items()
                    if matches(selector, o["metadata"].get("labels") or {})
                ),
                key=lambda kv: kv[0],
            )
            if after is not None:
                items = [kv for kv in items if kv[0] > after]
            page = items[:limit] if limit else items
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps([rv, page[-1][0]]).encode()
                ).decode()
                meta["remainingItemCount"] = len(items) - limit
            self.pages += 1
            if self.pages == self.compact_at_page:  # writes and a compaction between pages
                self.rv += 1
                self.oldest = self.rv
            body = {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": meta,
                "items": [o for _, o in page],
            }
        return self._json(h, 200, body)

    def create(self, h: BaseHTTPRequestHandler) -> None:
        """POST an Event (kept in `events`) or an object of a served resource (a Lease)."""
        parts = urlsplit(h.path).path.strip("/").split("/")
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        if self.down:
            h.close_connection = True
            h.connection.close()
            return
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
            time.sleep(self.event_delay)  # a slow or overloaded server, as seen by clients
            with self.cond:
                self.rv += 1
                body.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
                self.events.append(body)
            return self._json(h, 201, body)
        collection, ns, name, _ = route(urlsplit(h.path).path)
        if not collection or name or not ns:
            return self._status(h, 404, "NotFound", f"{h.path} is not served here")
        self.writes[("POST", collection, "")] += 1
        kind = RESOURCES[collection][0]
        with self.cond:
            if (ns, body["metadata"]["name"]) in self.objects[collection]:
                return self._status(h, 409, "AlreadyExists", "already exists")
            body["metadata"]["namespace"] = ns
            obj = self._write(collection, kind, body)
        self._json(h, 201, obj)

    def update(self, h: BaseHTTPRequestHandler, patch: bool) -> None:
        """PUT (with optimistic concurrency on resourceVersion) or a merge PATCH, of an
        object or its status."""
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        if self.down:
            h.close_connection = True
            h.connection.close()
            return
        collection, ns, name, sub = route(urlsplit(h.path).path)
        if not collection or not name or sub not in ("", "status"):
            return self._status(h, 404, "NotFound", f"{h.path} is not served here")
        self.writes[("PATCH" if patch else "PUT", collection, sub)] += 1
        kind = RESOURCES[collection][0]
        with self.cond:
            old = self.objects[collection].get((ns, name))
            if old is None:
                return self._status(h, 404, "NotFound", f"{name} not found")
            if patch:
                if sub == "status":
                    body = {"status": body.get("status")}
                new = merge_patch(old, body)
            else:
                rv = (body.get("metadata") or {}).get("resourceVersion")
                if rv and rv != old["metadata"]["resourceVersion"]:
                    return self._status(h, 409, "Conflict", "the object has been modified")
                new = body
            obj = self._write(collection, kind, new)
        self._json(h, 200, obj)

    def _watch(self, h, path, kind, api_version, q, selector) -> None:
        start = int(q.get("resourceVersion") or self.rv)
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: dict) -> None:
            data = (json.dumps(event) + "\n").encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            with self.cond:
                epoch = self.epoch
                if start < self.oldest:
                    send(
                        {
                            "type": "ERROR",
                            "object": {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "message": f"too old resource version: {start} ({self.oldest})",
                                "reason": "Expired",
                                "code": 410,
                            },
                        }
                    )
                    h.wfile.write(b"0\r\n\r\n")
                    return
            sent_rv, last_bookmark = start, time.monotonic()
            while time.monotonic() < deadline:
                with self.cond:
                    if self.epoch != epoch or self.down:
                        h.close_connection = True
                        return  # cut without the closing chunk, as a dropped connection
                    events = [
                        (rv, t, o, b)
                        for rv, p, t, o, b in self.history
                        if p == path and rv > sent_rv
                    ]
                    if not events:
                        self.cond.wait(0.1)
                        events = [
                            (rv, t, o, b)
                            for rv, p, t, o, b in self.history
                            if p == path and rv > sent_rv
                        ]
                for rv, etype, obj, before in events:
                    event = selected(selector, etype, obj, before)
                    if event is not None:
                        send(event)
                    sent_rv = rv
                if bookmarks and time.monotonic() - last_bookmark > self.bookmark_every:
                    send(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": kind,
                                "apiVersion": api_version,
                                "metadata": {"resourceVersion": str(max(sent_rv, start))},
                            },
                        }
                    )
                    last_bookmark = time.monotonic()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    @staticmethod
    def _json(h, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h, code: int, reason: str, message: str) -> None:
        self._json(
            h,
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": reason,
                "message": message,
                "code": code,
            },
        )
