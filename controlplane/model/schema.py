"""Known fields of the objects xlb reads, for strict decoding of hand-written manifests.

`kubectl apply` (strict field validation, the default since 1.27) rejects unknown fields; a
service proxy fed by files must do the same, or a typo like `addresss` silently empties a
Service. Objects from the real API server are never checked: it already pruned them, and a
newer server may add fields this table does not know.
"""

from __future__ import annotations

import difflib
from typing import Any

from .diagnostics import Collector

# A schema is {field: sub-schema}; a list field is [sub-schema]; None accepts anything.
Schema = dict[str, Any] | list[Any] | None


def _leaves(names: str) -> dict[str, None]:
    """Fields whose contents are not checked further, from a space-separated list."""
    return dict.fromkeys(names.split())


_METADATA: Schema = _leaves(
    "name namespace labels annotations uid resourceVersion creationTimestamp generation "
    "managedFields finalizers ownerReferences deletionTimestamp deletionGracePeriodSeconds "
    "generateName selfLink"
)

_PORT: Schema = _leaves("name port protocol appProtocol")

SERVICE: Schema = {
    "apiVersion": None,
    "kind": None,
    "metadata": _METADATA,
    "spec": {
        **_leaves(
            "allocateLoadBalancerNodePorts clusterIP clusterIPs externalIPs externalName "
            "externalTrafficPolicy healthCheckNodePort internalTrafficPolicy ipFamilies "
            "ipFamilyPolicy loadBalancerClass loadBalancerIP loadBalancerSourceRanges "
            "publishNotReadyAddresses selector sessionAffinity trafficDistribution type"
        ),
        "ports": [_leaves("appProtocol name nodePort port protocol targetPort")],
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": None}},
    },
    "status": {
        "conditions": None,
        "loadBalancer": {"ingress": [_leaves("ip hostname ipMode ports")]},
    },
}

ENDPOINTS: Schema = {
    "apiVersion": None,
    "kind": None,
    "metadata": _METADATA,
    "subsets": [
        {
            "addresses": [_leaves("ip hostname nodeName targetRef")],
            "notReadyAddresses": [_leaves("ip hostname nodeName targetRef")],
            "ports": [_PORT],
        }
    ],
}

ENDPOINT_SLICE: Schema = {
    "apiVersion": None,
    "kind": None,
    "metadata": _METADATA,
    "addressType": None,
    "endpoints": [
        {
            **_leaves("addresses hostname nodeName targetRef zone deprecatedTopology"),
            "conditions": _leaves("ready serving terminating"),
            "hints": {"forZones": [{"name": None}], "forNodes": [{"name": None}]},
        }
    ],
    "ports": [_PORT],
}

# Fields that tutorials still use but Kubernetes removed, with what replaced them.
REMOVED: dict[str, str] = {
    "spec.ipFamily": (
        "removed in Kubernetes 1.20 (alpha dual-stack); write spec.ipFamilies: [{value}] "
        "and spec.ipFamilyPolicy: SingleStack instead"
    ),
    "spec.topologyKeys": (
        "removed in Kubernetes 1.22; use spec.trafficDistribution: PreferClose or "
        "internalTrafficPolicy: Local instead"
    ),
}


def _strip_indices(path: str) -> str:
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _closest(name: str, known: list[str]) -> tuple[str, bool] | None:
    """The known field the user most likely meant, and whether only the case differs."""
    by_case = [k for k in known if k.lower() == name.lower()]
    if by_case:
        return by_case[0], True
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return (close[0], False) if close else None


def check_fields(obj: Any, schema: Schema, diag: Collector, path: str = "") -> None:
    """Report every field of obj that schema does not know, with a fix when one is likely.
    Below a misspelled field, checking goes on with the schema of the field that was meant."""
    if schema is None:
        return
    if isinstance(schema, list):
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                check_fields(item, schema[0], diag, f"{path}[{i}]")
        return
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        here = f"{path}.{key}" if path else str(key)
        if key in schema:
            check_fields(value, schema[key], diag, here)
            continue
        removed = REMOVED.get(_strip_indices(here))
        if removed:
            diag.error(here, f"unknown field: {removed.format(value=value)}")
            continue
        meant = _closest(str(key), sorted(schema))
        hint = ""
        if meant:
            hint = f" (did you mean '{meant[0]}'?" + (
                " field names are case-sensitive)" if meant[1] else ")"
            )
        diag.error(
            here,
            f"unknown field{hint}; the object is rejected as `kubectl apply` would "
            "reject it; fix the field name",
        )
        if meant:
            check_fields(value, schema[meant[0]], diag, here)
