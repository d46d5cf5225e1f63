"""The lab's API server, for Services: what kube-apiserver does on `kubectl apply` that a
directory of manifests cannot do by itself, because it needs memory.

* An object is stamped once (creationTimestamp, uid) and keeps its stamps across edits.
* What the server allocated stays allocated: a ClusterIP or nodePort an edit leaves out is
  carried over (kubectl apply leaves server-set fields alone), and a new Service that asks
  for one another Service holds is refused; the older Service keeps it.
* An invalid edit is refused, and the last valid version stays.

The admitted objects, allocations written in as the server fills them in, are what the
agents' manifest source sees; every refusal is one line, as kubectl would print it. Pure: no
I/O; the lab keeps what it returns in its state.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

from ..model.diagnostics import Level
from ..model.objects import Service, ServiceType
from ..model.parse import parse_service
from ..sources.simulated import ClusterConfig, allocate_cluster_ips, allocate_node_ports


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


STAMP = "%Y-%m-%dT%H:%M:%SZ"  # metav1.Time: whole seconds


def _after(now: str, held: dict[str, dict[str, Any]]) -> str:
    """now, or one second past the newest stamp held if that is not earlier: whatever is
    admitted now is younger than everything before it (stamps are whole seconds, and the
    allocators serve the older claim first)."""
    stamps = [(o.get("metadata") or {}).get("creationTimestamp") or "" for o in held.values()]
    newest = max(stamps, default="")
    if newest < now:
        return now
    moment = dt.datetime.strptime(newest, STAMP) + dt.timedelta(seconds=1)
    return moment.strftime(STAMP)


def _carried(obj: dict[str, Any], old: dict[str, Any] | None, now: str) -> dict[str, Any]:
    """obj as the server would store it over old: stamps kept (or made), and the allocations
    that obj leaves out carried over from old."""
    new = copy.deepcopy(obj)
    meta = new.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    old_meta = (old or {}).get("metadata") or {}
    meta["creationTimestamp"] = old_meta.get("creationTimestamp") or now
    meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
    if old is None:
        return new
    spec, old_spec = new.setdefault("spec", {}), old.get("spec") or {}
    if spec.get("type") == "ExternalName" or old_spec.get("type") == "ExternalName":
        return new  # no allocation to keep across a change to or from a DNS name
    if not spec.get("clusterIP") and not spec.get("clusterIPs"):
        for field in ("clusterIP", "clusterIPs", "ipFamilies"):
            if field in old_spec:
                spec[field] = copy.deepcopy(old_spec[field])
    old_ports = {
        (p.get("port"), p.get("protocol") or "TCP"): p.get("nodePort")
        for p in old_spec.get("ports") or []
        if isinstance(p, dict)
    }
    for p in spec.get("ports") or []:
        held = isinstance(p, dict) and old_ports.get((p.get("port"), p.get("protocol") or "TCP"))
        if held and not p.get("nodePort"):
            p["nodePort"] = held
    if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]
    return new


def _written(obj: dict[str, Any], svc: Service) -> dict[str, Any]:
    """obj with what the allocators filled in (ClusterIPs, families, nodePorts)."""
    out = copy.deepcopy(obj)
    spec = out.setdefault("spec", {})
    if svc.cluster_ips:
        spec["clusterIP"], spec["clusterIPs"] = svc.cluster_ips[0], list(svc.cluster_ips)
        spec["ipFamilies"] = [str(f) for f in svc.ip_families]
    for raw, port in zip(spec.get("ports") or [], svc.ports, strict=False):
        if isinstance(raw, dict) and port.node_port:
            raw["nodePort"] = port.node_port
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    return out


def _allocated(
    objects: dict[str, dict[str, Any]], cfg: ClusterConfig
) -> tuple[dict[str, Service], dict[str, list[str]]]:
    """The allocators over these objects, the oldest first: (allocated, refusals by key)."""
    parsed = [s for s in (parse_service(o, strict=True)[0] for o in objects.values()) if s]
    refusals: dict[str, list[str]] = {}
    for step in (allocate_cluster_ips, allocate_node_ports):
        parsed, diags = step(parsed, cfg)
        for d in diags:
            if d.level is Level.ERROR:
                refusals.setdefault(f"{d.namespace}/{d.name}", []).append(str(d))
    return {s.key: s for s in parsed}, refusals


def admit(
    manifests: list[dict[str, Any]], held: dict[str, dict[str, Any]], cfg: ClusterConfig, now: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The Services the server holds after these manifests are applied over `held` (what it
    held before), and a line for each refusal. A Service no manifest names any more is
    deleted (the lab applies the whole directory, as `kubectl apply --prune` would). A new
    Service the server would refuse is passed on as it is: the agents' manifest source
    refuses it too, with the same line, and keeps serving the rest."""
    lines: list[str] = []
    wanted: dict[str, dict[str, Any]] = {}
    refused_new: dict[str, dict[str, Any]] = {}
    now = _after(now, held)
    for obj in manifests:
        key = _key(obj)
        new = _carried(obj, held.get(key), now)
        svc, diags = parse_service(new, strict=True)
        errors = [str(d) for d in diags if d.level is Level.ERROR]
        if svc is None or errors:
            if key in held:
                lines += [f"{e} (refused: the last valid version stays)" for e in errors]
                wanted[key] = held[key]
            else:
                refused_new[key] = new
            continue
        wanted[key] = new
    for _ in range(2):  # once more, with the last valid versions of refused edits
        allocated, refusals = _allocated(wanted, cfg)
        refused_edits = [k for k in refusals if k in held and wanted[k] is not held[k]]
        if not refused_edits:
            break
        for key in refused_edits:
            lines += [f"{e} (refused: the last valid version stays)" for e in refusals[key]]
            wanted[key] = held[key]
    out = dict(refused_new)
    for key, obj in wanted.items():
        svc = allocated.get(key)
        if svc is None:  # a new Service asking for what an older one holds
            lines += refusals.get(key, [])
            out[key] = obj
        elif svc.type is ServiceType.EXTERNAL_NAME:
            out[key] = obj
        else:
            out[key] = _written(obj, svc)
    return out, lines
