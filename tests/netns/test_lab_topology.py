"""Traffic distribution with real traffic in a 3-node dual-stack lab (zones a, b, a): one pod
on each node behind three ClusterIP Services, PreferSameNode, PreferSameZone and none. The
lab's EndpointSlice controller writes the hints as kube-controller-manager does, and each
agent follows them as kube-proxy 1.35 does. From a pod and from the node itself, on node-1
(zone a, which it shares with node-3) and node-2 (alone in zone b), 30 new connections
each: PreferSameNode reaches this node's pod only, PreferSameZone the zone's pods only, and
the default all three (3 x (2/3)^30 ~ 2e-5 that one of three is missed by chance)."""

from __future__ import annotations

from collections import Counter

import pytest

from controlplane.lab.scenarios import joined, to_yaml, web_behind_load_balancers
from controlplane.sources.manifests import load_cluster
from tests.netns.test_lab import a_pod, get, running_lab

DISTRIBUTIONS = {"same-node": "PreferSameNode", "same-zone": "PreferSameZone", "spread": None}
TRIES = 30


def services() -> str:
    docs = []
    for name, distribution in DISTRIBUTIONS.items():
        spec: dict = {"ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"},
                      "ports": [{"name": "http", "port": 8000, "targetPort": 80}]}  # fmt: skip
        if distribution:
            spec["trafficDistribution"] = distribution
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                     "spec": spec})  # fmt: skip
    return to_yaml(docs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("topology")
    (d / "web.yaml").write_text(joined(web_behind_load_balancers(0, replicas=3), services()))
    with running_lab(d, nodes=3) as lab:
        yield lab


def cluster_ips(lab) -> dict[str, list[str]]:
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    return {s.name: list(s.cluster_ips) for s in c.services if s.name in DISTRIBUTIONS}


@pytest.mark.parametrize("origin", ["pod", "node"])
@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_each_distribution_reaches_the_nodes_its_hints_name(lab, node, origin):
    zones = {n.name: n.zone for n in lab.load().nodes}
    assert len(set(zones.values())) == 2
    web = {p.node: p.name for p in lab.load().pods}
    assert sorted(web) == sorted(zones)  # one pod a node
    source = a_pod(lab, node) if origin == "pod" else node
    expect = {
        "same-node": {node},
        "same-zone": {n for n in zones if zones[n] == zones[node]},
        "spread": set(zones),
    }
    for name, ips in cluster_ips(lab).items():
        for ip in ips:
            seen = Counter(get(lab, source, ip, 8000)[1] for _ in range(TRIES))
            print(f"{origin} on {node} -> {name} {ip}: {dict(sorted(seen.items()))}")
            assert set(seen) == expect[name], (name, ip, seen)
