"""loadBalancerSourceRanges with real traffic from every origin, in a 2-node dual-stack lab,
as kube-proxy applies them (its firewall-check in prerouting and output): one LoadBalancer
open to the LAN (192.168.198.0/24, fd00:198::/64) and one open to a documentation range only.
The LAN's client, a node (its address is on the LAN) and a pod (its address is not) each try
both. Before xlb applied ranges to the socket hooks, the pod and the node reached both."""

from __future__ import annotations

import sys

import pytest

from controlplane.lab.scenarios import joined, to_yaml, web_behind_load_balancers
from controlplane.sources.manifests import load_cluster
from tests.netns.test_lab import a_pod, run, running_lab

RANGES = {
    "lan-only": ["192.168.198.0/24", "fd00:198::/64"],
    "elsewhere": ["203.0.113.0/24", "2001:db8::/32"],
}

PROBE = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("answered" if s.recv(100) else "closed")
except OSError as e:
    print("timeout" if e.errno is None else f"errno-{e.errno}")
"""


def services() -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
                  "loadBalancerSourceRanges": ranges, "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 8000, "targetPort": 80}]}}
        for name, ranges in RANGES.items()
    ]  # fmt: skip
    return to_yaml(docs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranges")
    (d / "web.yaml").write_text(joined(web_behind_load_balancers(0, replicas=2), services()))
    with running_lab(d, nodes=2) as lab:
        yield lab


def ingress(lab) -> dict[str, list[str]]:
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    return {s.name: list(s.ingress_ips) for s in c.services if s.name in RANGES}


@pytest.mark.parametrize("origin", ["client", "node-2", "pod"])
def test_each_origin_reaches_the_load_balancers_whose_ranges_hold_its_address(lab, origin):
    source = a_pod(lab, "node-1") if origin == "pod" else origin
    ips = ingress(lab)
    assert all(len(v) == 2 for v in ips.values()), ips  # one of each family
    for name, addresses in ips.items():
        for ip in addresses:
            out = run(lab, source, sys.executable, "-c", PROBE, ip, "8000", timeout=15)
            got = out.stdout.strip()
            print(f"{origin} -> {name} {ip}: {got}")
            # the client and the nodes are on the LAN; a pod's address is in no range
            allowed = name == "lan-only" and origin != "pod"
            assert (got == "answered") is allowed, (origin, name, ip, got, out.stderr)
