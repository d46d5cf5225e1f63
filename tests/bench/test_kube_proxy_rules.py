"""The rulesets the benchmarks load as kube-proxy's (bench/kube_proxy_rules.py) are accepted
by the real iptables-restore and nft, and hold what a packet walks: one Service chain and one
endpoint chain per Service, in order, the measured one last."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from bench.kube_proxy_rules import iptables_rules, nft_rules

VIPS = ["10.202.0.0", "10.202.0.1", "10.200.0.1"]

pytestmark = pytest.mark.kernel


@pytest.fixture
def netns():
    name = f"xlb-rules-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("masquerade", [True, False])
@pytest.mark.parametrize("postrouting", [True, False])
def test_the_iptables_ruleset_loads_and_walks_every_service(netns, masquerade, postrouting):
    text = iptables_rules(VIPS, "udp", 80, "10.201.0.2", 8080, masquerade, postrouting)
    run = ["ip", "netns", "exec", netns]
    subprocess.run([*run, "iptables-restore"], input=text, text=True, check=True)
    nat = subprocess.run([*run, "iptables-save", "-t", "nat"], capture_output=True, text=True)
    services = [line for line in nat.stdout.splitlines() if line.startswith("-A KUBE-SERVICES")]
    assert [line.split()[3] for line in services] == [f"{v}/32" for v in VIPS]
    assert (f"-A KUBE-SVC-{0:012d} -j KUBE-MARK-MASQ" in nat.stdout) == masquerade
    assert ("MASQUERADE" in nat.stdout) == postrouting


@pytest.mark.parametrize("masquerade", [True, False])
@pytest.mark.parametrize("postrouting", [True, False])
def test_the_nftables_ruleset_loads_with_one_verdict_per_service(netns, masquerade, postrouting):
    text = nft_rules(VIPS, "udp", 80, "10.201.0.2", 8080, masquerade, postrouting)
    run = ["ip", "netns", "exec", netns]
    subprocess.run([*run, "nft", "-f", "-"], input=text, text=True, check=True)
    out = subprocess.run([*run, "nft", "list", "map", "ip", "kube-proxy", "service-ips"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert all(f"{v} . udp . 80 : goto svc-{i}" in out for i, v in enumerate(VIPS))
    table = subprocess.run([*run, "nft", "list", "table", "ip", "kube-proxy"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert ("meta mark set 0x00004000" in table) == masquerade
    assert ("masquerade fully-random" in table) == postrouting
