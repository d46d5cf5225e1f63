"""kube-proxy's own table for choosing endpoints, run against xlb's model.

TestCategorizeEndpoints of kubernetes pkg/proxy/topology_test.go (the 1.33+ version, where
kube-proxy follows hints whenever every ready endpoint has them, whatever the Service says),
ported as data: the case names are kube-proxy's, the endpoints are written as the API
carries them (an EndpointSlice per case, parsed by xlb), "local" means on this node. Each
row's expected sets are kube-proxy's: `cluster` for a Service that uses Cluster endpoints,
`local` for one that uses Local ones (None where the Service uses no such set), and whether
the Service has any endpoint anywhere (reject vs drop).

The stored table predates PreferSameNode, so NODE_HINT_CASES are written from
topology.go's topologyModeFromHints (node hints first, all-or-nothing over the ready
endpoints, then zone hints, then none), which the first rows also pin down for zones.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.model.endpoints import categorize, port_endpoints, topology_mode
from controlplane.model.objects import Node
from controlplane.model.parse import parse_endpoint_slice
from tests.helpers import service

HERE = "node-1"  # this node; "local" endpoints are on it, the others on node-2


def e(address: str, ready: bool = True, serving: bool | None = None, terminating: bool = False,
      local: bool = False, zones: tuple[str, ...] | None = None,
      nodes: tuple[str, ...] | None = None) -> dict[str, Any]:  # fmt: skip
    """One endpoint as kube-proxy's table writes it (address "ip:port", flags, hints)."""
    return {"address": address, "ready": ready, "serving": ready if serving is None else serving,
            "terminating": terminating, "local": local, "zones": zones, "nodes": nodes}  # fmt: skip


A, B, C, D = ("zone-a",), ("zone-b",), ("zone-c",), ("zone-d",)

# (name, node zone label or None, iTP Local, eTP Local and externally reachable, endpoints,
#  cluster, local, only_remote)
CASES: list[tuple] = [
    (
        "should use topology since all endpoints have hints, node has a zone label and and there "
        "are endpoints for the node's zone",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A),
            e("10.1.2.4:80", zones=B),
            e("10.1.2.5:80", zones=C),
            e("10.1.2.6:80", zones=A),
        ],
        {"10.1.2.3:80", "10.1.2.6:80"},
        None,
        False,
    ),
    (
        "externalTrafficPolicy: Local, topology ignored for Local endpoints",
        "zone-a",
        False,
        True,
        [
            e("10.1.2.3:80", zones=A, local=True),
            e("10.1.2.4:80", zones=B, local=True),
            e("10.1.2.5:80", zones=C),
            e("10.1.2.6:80", zones=A),
        ],
        {"10.1.2.3:80", "10.1.2.6:80"},
        {"10.1.2.3:80", "10.1.2.4:80"},
        False,
    ),
    (
        "internalTrafficPolicy: Local, topology ignored for Local endpoints",
        "zone-a",
        True,
        False,
        [
            e("10.1.2.3:80", zones=A, local=True),
            e("10.1.2.4:80", zones=B, local=True),
            e("10.1.2.5:80", zones=C),
            e("10.1.2.6:80", zones=A),
        ],
        {"10.1.2.3:80", "10.1.2.6:80"},
        {"10.1.2.3:80", "10.1.2.4:80"},
        False,
    ),
    (
        "empty node labels",
        None,
        False,
        False,
        [e("10.1.2.3:80", zones=A)],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "empty zone label",
        "",
        False,
        False,
        [e("10.1.2.3:80", zones=A)],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "node in different zone, no endpoint filtering",
        "zone-b",
        False,
        False,
        [e("10.1.2.3:80", zones=A)],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "unready endpoint",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A),
            e("10.1.2.4:80", zones=B),
            e("10.1.2.5:80", zones=C),
            e("10.1.2.6:80", zones=A, ready=False),
        ],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "only unready endpoints in same zone (should not filter)",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A, ready=False),
            e("10.1.2.4:80", zones=B),
            e("10.1.2.5:80", zones=C),
            e("10.1.2.6:80", zones=A, ready=False),
        ],
        {"10.1.2.4:80", "10.1.2.5:80"},
        None,
        False,
    ),
    (
        "missing hints, no filtering applied",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A),
            e("10.1.2.4:80", zones=B),
            e("10.1.2.5:80"),
            e("10.1.2.6:80", zones=A),
        ],
        {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"},
        None,
        False,
    ),
    (
        "multiple hints per endpoint, filtering includes any endpoint with zone included",
        "zone-c",
        False,
        False,
        [
            e("10.1.2.3:80", zones=("zone-a", "zone-b", "zone-c")),
            e("10.1.2.4:80", zones=("zone-b", "zone-c")),
            e("10.1.2.5:80", zones=("zone-b", "zone-d")),
            e("10.1.2.6:80", zones=C),
        ],
        {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"},
        None,
        False,
    ),
    (
        "conflicting topology and localness require merging allEndpoints",
        "zone-a",
        False,
        True,
        [
            e("10.0.0.0:80", zones=A, local=True),
            e("10.0.0.1:80", zones=B, local=True),
            e("10.0.0.2:80", zones=A),
            e("10.0.0.3:80", zones=B),
        ],
        {"10.0.0.0:80", "10.0.0.2:80"},
        {"10.0.0.0:80", "10.0.0.1:80"},
        False,
    ),
    (
        "internalTrafficPolicy: Local, with empty endpoints",
        None,
        True,
        False,
        [],
        None,
        set(),
        False,
    ),
    (
        "internalTrafficPolicy: Local, but all endpoints are remote",
        None,
        True,
        False,
        [e("10.0.0.0:80"), e("10.0.0.1:80")],
        None,
        set(),
        True,
    ),
    (
        "internalTrafficPolicy: Local, all endpoints are local",
        None,
        True,
        False,
        [e("10.0.0.0:80", local=True), e("10.0.0.1:80", local=True)],
        None,
        {"10.0.0.0:80", "10.0.0.1:80"},
        False,
    ),
    (
        "internalTrafficPolicy: Local, some endpoints are local",
        None,
        True,
        False,
        [e("10.0.0.0:80", local=True), e("10.0.0.1:80")],
        None,
        {"10.0.0.0:80"},
        False,
    ),
    (
        "Cluster traffic policy, endpoints not Ready",
        None,
        False,
        False,
        [e("10.0.0.0:80", ready=False), e("10.0.0.1:80", ready=False)],
        set(),
        None,
        False,
    ),
    (
        "Cluster traffic policy, some endpoints are Ready",
        None,
        False,
        False,
        [e("10.0.0.0:80", ready=False), e("10.0.0.1:80")],
        {"10.0.0.1:80"},
        None,
        False,
    ),
    (
        "Cluster traffic policy, all endpoints are terminating",
        None,
        False,
        False,
        [
            e("10.0.0.0:80", ready=False, serving=True, terminating=True, local=True),
            e("10.0.0.1:80", ready=False, serving=True, terminating=True),
        ],
        {"10.0.0.0:80", "10.0.0.1:80"},
        None,
        False,
    ),
    (
        "iTP: Local, eTP: Cluster, some endpoints local",
        None,
        True,
        False,
        [e("10.0.0.0:80", local=True), e("10.0.0.1:80")],
        {"10.0.0.0:80", "10.0.0.1:80"},
        {"10.0.0.0:80"},
        False,
    ),
    (
        "iTP: Cluster, eTP: Local, some endpoints local",
        None,
        False,
        True,
        [e("10.0.0.0:80", local=True), e("10.0.0.1:80")],
        {"10.0.0.0:80", "10.0.0.1:80"},
        {"10.0.0.0:80"},
        False,
    ),
    (
        "iTP: Local, eTP: Local, some endpoints local",
        None,
        True,
        True,
        [e("10.0.0.0:80", local=True), e("10.0.0.1:80")],
        {"10.0.0.0:80", "10.0.0.1:80"},
        {"10.0.0.0:80"},
        False,
    ),
    (
        "iTP: Local, eTP: Local, all endpoints remote",
        None,
        True,
        True,
        [e("10.0.0.0:80"), e("10.0.0.1:80")],
        {"10.0.0.0:80", "10.0.0.1:80"},
        set(),
        False,
    ),
    (
        "iTP: Local, eTP: Local, all endpoints remote and terminating",
        None,
        True,
        True,
        [
            e("10.0.0.0:80", ready=False, serving=True, terminating=True),
            e("10.0.0.1:80", ready=False, serving=True, terminating=True),
        ],
        {"10.0.0.0:80", "10.0.0.1:80"},
        set(),
        True,
    ),
    (
        "iTP: Cluster, eTP: Local, with terminating endpoints",
        None,
        False,
        True,
        [
            e("10.0.0.0:80"),
            e("10.0.0.1:80", ready=False, serving=False, local=True),
            e("10.0.0.2:80", ready=False, serving=True, terminating=True, local=True),
            e("10.0.0.3:80", ready=False, serving=True, terminating=True),
        ],
        {"10.0.0.0:80"},
        {"10.0.0.2:80"},
        False,
    ),
    (
        "no cluster endpoints for iTP:Local internal-only service",
        None,
        True,
        False,
        [e("10.0.0.0:80"), e("10.0.0.1:80", local=True)],
        None,
        {"10.0.0.1:80"},
        False,
    ),
]

N1, N2, N3 = ("node-1",), ("node-2",), ("node-3",)

NODE_HINT_CASES: list[tuple] = [
    (
        "PreferSameNode: every ready endpoint has a node hint, one for this node",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A, nodes=N1, local=True),
            e("10.1.2.4:80", zones=A, nodes=N2),
            e("10.1.2.5:80", zones=B, nodes=N3),
        ],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "PreferSameNode: no endpoint for this node falls back to the zone hints",
        "zone-a",
        False,
        False,
        [e("10.1.2.4:80", zones=A, nodes=N2), e("10.1.2.5:80", zones=B, nodes=N3)],
        {"10.1.2.4:80"},
        None,
        False,
    ),
    (
        "PreferSameNode: one ready endpoint without a node hint disables node hints",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A, nodes=N1, local=True),
            e("10.1.2.4:80", zones=A),
            e("10.1.2.5:80", zones=B, nodes=N3),
        ],
        {"10.1.2.3:80", "10.1.2.4:80"},
        None,
        False,
    ),
    (
        "PreferSameNode: an unready endpoint without hints does not count",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A, nodes=N1, local=True),
            e("10.1.2.4:80", ready=False),
            e("10.1.2.5:80", zones=B, nodes=N3),
        ],
        {"10.1.2.3:80"},
        None,
        False,
    ),
    (
        "PreferSameNode: the node's only hinted endpoint is unready: zone hints",
        "zone-b",
        False,
        False,
        [
            e("10.1.2.3:80", zones=A, nodes=N1, ready=False, local=True),
            e("10.1.2.4:80", zones=A, nodes=N2),
            e("10.1.2.5:80", zones=B, nodes=N3),
        ],
        {"10.1.2.5:80"},
        None,
        False,
    ),
    (
        "PreferSameNode: node hints but no zone hints and none for this node: no filtering",
        "zone-a",
        False,
        False,
        [e("10.1.2.4:80", nodes=N2), e("10.1.2.5:80", nodes=N3)],
        {"10.1.2.4:80", "10.1.2.5:80"},
        None,
        False,
    ),
    (
        "PreferSameNode with internalTrafficPolicy Local: topology ignored for Local endpoints",
        "zone-a",
        True,
        False,
        [e("10.1.2.3:80", zones=A, nodes=N1, local=True), e("10.1.2.6:80", zones=A, nodes=N2)],
        {"10.1.2.3:80"},
        {"10.1.2.3:80"},
        False,
    ),
    (
        "PreferSameNode: all ready endpoints elsewhere and terminating local one: no topology "
        "in the fallback",
        "zone-a",
        False,
        False,
        [
            e("10.1.2.3:80", ready=False, serving=True, terminating=True, local=True),
            e("10.1.2.4:80", ready=False, serving=True, terminating=True),
        ],
        {"10.1.2.3:80", "10.1.2.4:80"},
        None,
        False,
    ),
]


def endpoint_slice(endpoints: list[dict]) -> dict:
    out = []
    for x in endpoints:
        ip, port = x["address"].rsplit(":", 1)
        raw: dict[str, Any] = {
            "addresses": [ip],
            "conditions": {
                "ready": x["ready"],
                "serving": x["serving"],
                "terminating": x["terminating"],
            },  # fmt: skip
            "nodeName": HERE if x["local"] else "node-2",
        }
        hints: dict[str, Any] = {}
        if x["zones"] is not None:
            hints["forZones"] = [{"name": z} for z in x["zones"]]
        if x["nodes"] is not None:
            hints["forNodes"] = [{"name": n} for n in x["nodes"]]
        if hints:
            raw["hints"] = hints
        out.append(raw)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "svc-abcde",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "svc"},
        },  # fmt: skip
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": out,
    }


@pytest.mark.parametrize(
    "name,zone,itp_local,etp_local,endpoints,cluster,local,only_remote",
    CASES + NODE_HINT_CASES,
    ids=[c[0] for c in CASES + NODE_HINT_CASES],
)
def test_kube_proxy_categorize_endpoints(
    name, zone, itp_local, etp_local, endpoints, cluster, local, only_remote
):
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": 80}]}
    if itp_local:
        spec["internalTrafficPolicy"] = "Local"
    if etp_local:
        spec |= {"type": "NodePort", "externalTrafficPolicy": "Local"}
    svc = service("svc", **spec)
    sl, diags = parse_endpoint_slice(endpoint_slice(endpoints))
    assert sl is not None and not diags, diags
    labels = {} if zone is None else {"topology.kubernetes.io/zone": zone}
    node = Node(HERE, ("192.168.198.201",), labels)
    eps = port_endpoints([sl], svc.ports[0], "IPv4")
    got = categorize(svc, eps, node)

    def names(backends) -> set[str]:
        return {f"{b.address}:{b.port}" for b in backends}

    print(f"topology mode {topology_mode(eps, node)!r}")
    if cluster is not None:  # the Service uses Cluster endpoints somewhere
        assert names(got.cluster) == cluster
    if local is not None:  # ... Local ones
        assert names(got.local) == local
    union = (cluster or set()) | (local or set())
    assert got.has_any == (bool(union) or only_remote)
