"""Builders for Kubernetes-shaped objects, so tests read like the manifests users write."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controlplane.model.objects import Node
from controlplane.model.parse import parse_endpoint_slice, parse_service

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHARED_EXAMPLES = REPO.parent / "shared" / "examples"

NODE1 = Node("node-1", ("192.168.198.201", "fd00:198::201"), {"topology.kubernetes.io/zone": "a"})
NODE2 = Node("node-2", ("192.168.198.202",), {"topology.kubernetes.io/zone": "b"})


def svc(name: str = "web", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace}
    for key in ("labels", "annotations"):
        if key in spec:
            meta[key] = spec.pop(key)
    status = spec.pop("status", None)
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    spec.setdefault("clusterIP", "10.96.0.10")
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if status:
        obj["status"] = status
    return obj


def service(name: str = "web", **spec: Any):
    parsed, diags = parse_service(svc(name, **spec), strict=True)
    assert parsed is not None, [str(d) for d in diags]
    return parsed


def ep(
    ip: str,
    node: str = "node-1",
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    zones: list[str] | None = None,
) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating)):
        if value is not None:
            cond[key] = value
    out: dict[str, Any] = {
        "addresses": [ip],
        "conditions": cond,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": f"pod-{ip}"},
    }
    if zones is not None:
        out["hints"] = {"forZones": [{"name": z} for z in zones]}
    return out


def slice_(
    service_name: str,
    endpoints: list[dict[str, Any]],
    ports=None,
    family="IPv4",
    name: str | None = None,
    namespace: str = "default",
):
    obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-{family.lower()}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    parsed, diags = parse_endpoint_slice(obj, strict=True)
    assert parsed is not None, [str(d) for d in diags]
    return parsed


def addrs(backends) -> list[str]:
    return sorted(b.address for b in backends)


def eventually(check, timeout: float = 15, every: float = 0.2):
    """check() until it returns something true, which is returned; at the timeout, its last
    answer (false), for the caller's assertion to show."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > end:
            return got
        time.sleep(every)


def wait_until(
    pred, timeout: float = 5.0, every: float = 0.02, since: float | None = None, what: str = ""
) -> float:
    """pred() until it is true; the seconds that took, from the call (or from since, a
    time.monotonic() taken before the action waited on). The one polling helper of the unit
    tests: past timeout the test fails, saying what it waited for."""
    start = time.monotonic()
    end = start + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what or pred}"
        time.sleep(every)
    return time.monotonic() - (start if since is None else since)
