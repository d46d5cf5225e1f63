"""The announcing node for each LoadBalancer IP."""

from __future__ import annotations

from collections import Counter

from controlplane.l2.election import owner, owners
from controlplane.model.objects import Node
from tests.helpers import ep, service, slice_

NODES = [Node(f"node-{i}", labels={"rack": "a" if i < 3 else "b"}) for i in range(1, 5)]
LIVE = {n.name for n in NODES}


def lb(name, ip, **spec):
    return service(
        name, type="LoadBalancer", status={"loadBalancer": {"ingress": [{"ip": ip}]}}, **spec
    )


def test_same_answer_everywhere_and_spread_over_nodes():
    ips = [f"192.168.198.{i}" for i in range(1, 201)]
    first = {ip: owner(ip, LIVE) for ip in ips}
    assert first == {ip: owner(ip, sorted(LIVE, reverse=True)) for ip in ips}
    assert min(Counter(first.values()).values()) > 25  # 200 IPs over 4 nodes, roughly even


def test_a_dead_node_moves_only_its_own_ips():
    ips = [f"192.168.198.{i}" for i in range(1, 201)]
    before = {ip: owner(ip, LIVE) for ip in ips}
    after = {ip: owner(ip, LIVE - {"node-2"}) for ip in ips}
    moved = {ip for ip in ips if before[ip] != after[ip]}
    assert moved == {ip for ip in ips if before[ip] == "node-2"}


def test_local_policy_only_nodes_with_a_ready_local_endpoint_and_selectors():
    svc = lb("web", "192.168.198.240", externalTrafficPolicy="Local")
    eps = slice_("web", [ep("10.244.3.5", "node-3"), ep("10.244.4.5", "node-4", ready=False)])
    assert owners([svc], [eps], NODES, LIVE) == {"192.168.198.240": "node-3"}
    assert owners([svc], [eps], NODES, LIVE - {"node-3"}) == {}  # nobody can serve it
    cluster_svc = lb("any", "192.168.198.241", clusterIP="10.96.0.11")
    got = owners([cluster_svc], [], NODES, LIVE, [{"matchLabels": {"rack": "b"}}])
    assert got == {"192.168.198.241": owner("192.168.198.241", {"node-3", "node-4"})}
