"""kubectl-style YAML/JSON manifests as a source: the standalone mode and the lab.

Files are read as `kubectl apply -f` reads them (files or directories, multi-document YAML,
`kind: List`), checked strictly, and turned into a whole cluster by the allocators and the
endpoint controller in cluster.py. A broken file or object is a diagnostic; the rest loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..model.diagnostics import Collector, Diagnostic, Level
from ..model.objects import ContainerPort, EndpointSlice, Node, Pod, Protocol, Service
from ..model.parse import parse_endpoint_slice, parse_endpoints, parse_node, parse_service
from ..model.pools import parse_advertisement, parse_pool
from ..model.snapshot import Cluster
from .simulated import (
    ClusterConfig,
    allocate_cluster_ips,
    allocate_node_ports,
    assign_load_balancer_ips,
    endpoint_slices_for,
    place_pods,
    synthesize_nodes,
)

_WORKLOADS = {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"}
_KNOWN = {
    "Service",
    "Endpoints",
    "EndpointSlice",
    "Node",
    "Pod",
    "IPAddressPool",
    "L2Advertisement",
    *_WORKLOADS,
}
_MANIFEST_SUFFIXES = {".yaml", ".yml", ".json"}


@dataclass(frozen=True)
class Document:
    obj: dict[str, Any]
    origin: str  # file, and document number when the file holds several


def _file_diag(origin: str, message: str) -> Diagnostic:
    return Diagnostic(Level.ERROR, "File", "", origin, "", message)


def manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Diagnostic]]:
    files: list[Path] = []
    diags: list[Diagnostic] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in _MANIFEST_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            diags.append(_file_diag(str(path), "no such file or directory"))
    return files, diags


def load_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[Diagnostic]]:
    files, diags = manifest_files(paths)
    docs: list[Document] = []
    for path in files:
        try:
            text = path.read_text()
            raw_docs = (
                [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
            )
        except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
            diags.append(
                _file_diag(str(path), f"cannot be read as a manifest: {exc}".replace("\n", " "))
            )
            continue
        for i, obj in enumerate(raw_docs):
            if obj is None:
                continue
            origin = f"{path}#{i + 1}" if len(raw_docs) > 1 else str(path)
            items = (
                obj.get("items") if isinstance(obj, dict) and obj.get("kind") == "List" else [obj]
            )
            for item in items or []:
                if not isinstance(item, dict) or not item.get("kind"):
                    diags.append(
                        _file_diag(
                            origin,
                            "a document without `kind:` is not an object; add apiVersion and kind",
                        )
                    )
                    continue
                docs.append(Document(item, origin))
    return docs, diags


def _containers_ports(pod_spec: dict[str, Any]) -> tuple[ContainerPort, ...]:
    ports = []
    for c in pod_spec.get("containers") or []:
        for p in (c or {}).get("ports") or []:
            if isinstance(p, dict) and isinstance(p.get("containerPort"), int):
                try:
                    proto = Protocol(p.get("protocol") or "TCP")
                except ValueError:
                    continue
                ports.append(ContainerPort(str(p.get("name") or ""), p["containerPort"], proto))
    return tuple(ports)


def workload_pods(obj: dict[str, Any], nodes: list[Node]) -> tuple[list[Pod], list[Diagnostic]]:
    kind = obj["kind"]
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    diag = Collector(kind, ns, name or "<unnamed>")
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    labels = {
        str(k): str(v) for k, v in ((template.get("metadata") or {}).get("labels") or {}).items()
    }
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    if not name:
        diag.error("metadata.name", "required")
    if any(labels.get(k) != str(v) for k, v in match.items()):
        diag.error(
            "spec.selector",
            "does not match spec.template.metadata.labels; the workload would own no pods",
        )
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        diag.error("spec.replicas", f"{replicas!r} must be a whole number ≥ 0")
    if diag.has_errors:
        return [], diag.items
    ports = _containers_ports(template.get("spec") or {})
    # a template's nodeName binds every replica to that node, as the scheduler is bypassed
    pinned = str((template.get("spec") or {}).get("nodeName") or "")
    tmpl_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
    pods = []
    if kind == "DaemonSet":
        for i, node in enumerate(nodes):
            pods.append(
                Pod(
                    ns,
                    f"{name}-{node.name}",
                    labels,
                    ports,
                    node_name=node.name,
                    owner=f"{kind}/{name}",
                    ordinal=i,
                )
            )
    else:
        for r in range(replicas):
            pod_name = f"{name}-{r}" if kind == "StatefulSet" else f"{name}-{tmpl_hash}-{r}"
            pods.append(Pod(ns, pod_name, labels, ports, node_name=pinned,
                            owner=f"{kind}/{name}", ordinal=r))  # fmt: skip
    return pods, diag.items


def pod_from(obj: dict[str, Any]) -> Pod | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        return None
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict)] or (
        [status["podIP"]] if status.get("podIP") else []
    )
    ready = True
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    return Pod(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta["name"]),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        ports=_containers_ports(spec),
        node_name=str(spec.get("nodeName") or ""),
        ips=tuple(str(ip) for ip in ips if ip),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        terminal=str(status.get("phase") or "") in ("Succeeded", "Failed"),
    )


def _dedupe(docs: list[Document]) -> tuple[list[Document], list[Diagnostic]]:
    """Later definitions win, as with `kubectl apply -f` over several files; say so."""
    last: dict[tuple[str, str, str], Document] = {}
    diags: list[Diagnostic] = []
    for doc in docs:
        meta = doc.obj.get("metadata") or {}
        ns = "" if doc.obj["kind"] == "Node" else str(meta.get("namespace") or "default")
        key = (doc.obj["kind"], ns, str(meta.get("name") or ""))
        if key in last and key[2]:
            diags.append(
                Diagnostic(
                    Level.WARNING,
                    key[0],
                    ns,
                    key[2],
                    "",
                    f"defined twice ({last[key].origin} and {doc.origin}); the later one is used",
                )
            )
        last[key] = doc
    return list(last.values()), diags


def build_cluster(docs: list[Document], cfg: ClusterConfig | None = None) -> Cluster:
    """The whole cluster that these manifests describe, with every diagnostic."""
    cfg = cfg or ClusterConfig()
    cluster = Cluster()
    docs, cluster.diagnostics = _dedupe(docs)
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    endpoints: list[tuple[str, list[EndpointSlice]]] = []
    pools: list = list(cfg.pools)
    for doc in docs:
        kind = doc.obj["kind"]
        if kind == "Service":
            svc, d = parse_service(doc.obj, strict=True)
            services += [svc] if svc else []
        elif kind == "EndpointSlice":
            sl, d = parse_endpoint_slice(doc.obj, strict=True)
            slices += [sl] if sl else []
        elif kind == "Endpoints":
            mirrored, d = parse_endpoints(doc.obj, strict=True)
            meta = doc.obj.get("metadata") or {}
            key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            if not any(x.level is Level.ERROR for x in d):
                endpoints.append((key, mirrored))
        elif kind == "Node":
            node, d = parse_node(doc.obj)
            cluster.nodes += [node] if node else []
        elif kind == "IPAddressPool":
            pool, d = parse_pool(doc.obj)
            pools += [pool] if pool else []
        elif kind == "L2Advertisement":
            ad, d = parse_advertisement(doc.obj)
            cluster.advertisements = (cluster.advertisements or []) + ([ad] if ad else [])
        else:
            d = (
                []
                if kind in _KNOWN
                else [
                    Diagnostic(
                        Level.INFO,
                        kind,
                        "",
                        str((doc.obj.get("metadata") or {}).get("name", "")),
                        "",
                        "ignored: xlb reads Services, Endpoints, EndpointSlices, Nodes, "
                        f"workloads, IPAddressPools and L2Advertisements ({doc.origin})",
                    )
                ]
            )
        cluster.diagnostics += d
    cluster.nodes = cluster.nodes or synthesize_nodes(cfg)

    pods: list[Pod] = []
    for doc in docs:
        if doc.obj["kind"] in _WORKLOADS:
            more, d = workload_pods(doc.obj, cluster.nodes)
            pods += more
            cluster.diagnostics += d
        elif doc.obj["kind"] == "Pod" and (pod := pod_from(doc.obj)):
            pods.append(pod)
    cluster.pods, d = place_pods(pods, cluster.nodes)
    cluster.diagnostics += d

    for step in (
        lambda s: allocate_cluster_ips(s, cfg),
        lambda s: allocate_node_ports(s, cfg),
        lambda s: assign_load_balancer_ips(s, pools),
    ):
        services, d = step(services)
        cluster.diagnostics += d
    cluster.services, cluster.pools = services, pools
    cluster.service_cidrs = list(cfg.service_cidrs)  # the ranges it allocates from

    by_key = {s.key: s for s in services}
    for key, mirrored in endpoints:
        svc = by_key.get(key)
        ns, name = key.split("/", 1)
        if svc is not None and svc.selector:
            cluster.diagnostics.append(
                Diagnostic(
                    Level.WARNING,
                    "Endpoints",
                    ns,
                    name,
                    "",
                    "ignored: Service has a selector, so its endpoints come from the pods it "
                    "selects; remove the Service's selector to use hand-written Endpoints",
                )
            )
            continue
        if svc is None:
            cluster.diagnostics.append(
                Diagnostic(
                    Level.WARNING,
                    "Endpoints",
                    ns,
                    name,
                    "metadata.name",
                    "no Service of this name in this namespace; the endpoints serve nothing "
                    "(Endpoints must have exactly the Service's name)",
                )
            )
        slices += mirrored
    for svc in services:
        if svc.selector and not svc.headless:
            more, d = endpoint_slices_for(svc, cluster.pods, cluster.nodes)
            slices += more
            cluster.diagnostics += d
    cluster.slices = slices
    return cluster


def load_cluster(paths: Iterable[str | Path], cfg: ClusterConfig | None = None) -> Cluster:
    docs, diags = load_documents(paths)
    cluster = build_cluster(docs, cfg)
    cluster.diagnostics = diags + cluster.diagnostics
    return cluster
