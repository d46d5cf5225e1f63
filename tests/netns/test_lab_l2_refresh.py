"""The announcements a LAN hears while nothing moves, in a dual-stack 2-node lab whose agents
refresh every 2 s (`--l2-refresh-interval`; 240 s by default): each LoadBalancer IP is
announced again by its owner only (gratuitous ARP for IPv4, unsolicited neighbour
advertisements for IPv6, as RFC 826 and RFC 4861 7.2.6 have them, read by scapy on the LAN),
and each owner's uplink is in the solicited-node group of each IPv6 address it holds, and in
no other's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from controlplane.l2.announce import solicited_node_mac
from controlplane.l2.election import owners
from controlplane.lab.scenarios import web_behind_load_balancers
from controlplane.sources.manifests import load_cluster
from tests.netns.neighbours import macs_of
from tests.netns.test_lab import running_lab

MANIFEST = web_behind_load_balancers(3, replicas=2, family_policy="PreferDualStack")

SNIFF = textwrap.dedent("""
    import json, sys
    from scapy.all import sniff
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.inet6 import IPv6, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr
    seconds = float(sys.argv[1])
    out = []
    def seen(p):
        if ARP in p and p[ARP].psrc == p[ARP].pdst:
            out.append({"kind": "garp", "ip": p[ARP].psrc, "mac": p.src, "op": p[ARP].op,
                        "hwsrc": p[ARP].hwsrc, "dst": p.dst, "t": float(p.time)})
        elif ICMPv6ND_NA in p and p[IPv6].dst == "ff02::1":
            na = p[ICMPv6ND_NA]
            opt = p[ICMPv6NDOptDstLLAddr].lladdr if ICMPv6NDOptDstLLAddr in p else None
            out.append({"kind": "na", "ip": na.tgt, "mac": p.src, "R": na.R, "S": na.S,
                        "O": na.O, "lladdr": opt, "hlim": p[IPv6].hlim, "t": float(p.time)})
    sniff(iface="eth0", timeout=seconds, prn=seen, store=False)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("refresh")
    (d / "lb.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=2, agent_args=["--l2-refresh-interval=2s"]) as lab:
        yield lab


def elected(lab) -> dict[str, str]:
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    live = {n.name for n in c.nodes}
    return owners(c.services, c.slices, c.nodes, live, c.advertisements, c.pools)


def test_each_lb_ip_is_refreshed_by_its_owner_alone_in_both_families(lab):
    time.sleep(4)  # past the takeover's own repeats (2 s)
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.client_ns}", sys.executable, "-c", SNIFF, "6.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    frames = json.loads(out.stdout)
    owner_of, node_of = elected(lab), macs_of(lab)
    assert any(":" in ip for ip in owner_of) and any("." in ip for ip in owner_of)
    for ip, owner in owner_of.items():
        mine = [f for f in frames if f["ip"] == ip]
        senders = {node_of.get(f["mac"], f["mac"]) for f in mine}
        times = sorted({round(f["t"], 1) for f in mine})
        print(f"{ip} ({owner}): {len(mine)} frames at {times}")
        assert senders == {owner}, (ip, senders)
        assert len(times) >= 3  # every 2 s over 6.5 s
        for f in mine:
            if f["kind"] == "garp":  # RFC 826 / RFC 5227: sender = target = the address
                assert f["op"] in (1, 2) and f["hwsrc"] == f["mac"]
                assert f["dst"] == "ff:ff:ff:ff:ff:ff"
            else:  # RFC 4861 7.2.6: unsolicited, override, the target's link-layer address
                assert (f["R"], f["S"], f["O"], f["hlim"]) == (0, 0, 1, 255)
                assert f["lladdr"] == f["mac"]


def test_each_owner_joins_the_solicited_node_groups_of_its_ipv6_addresses_only(lab):
    owner_of = elected(lab)
    for node in lab.load().nodes:
        joined = subprocess.run(
            ["ip", "-n", node.netns, "maddr", "show", "dev", "eth0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        v6 = {ip: owner for ip, owner in owner_of.items() if ":" in ip}
        own = {solicited_node_mac(ip).hex(":") for ip, owner in v6.items() if owner == node.name}
        others = {solicited_node_mac(ip).hex(":") for ip in v6} - own
        assert own and all(g in joined for g in own), (node.name, own, joined)
        assert not any(g in joined for g in others), (node.name, others, joined)


def test_status_and_metrics_name_every_lb_ips_announcer_cluster_wide(lab):
    """metallb#1085: which node announces what, seen from any node."""
    owner_of = elected(lab)
    for node in lab.load().nodes:
        shown = lab.exec(node.name, [sys.executable, "-m", "controlplane.cli", "status",
                                     "--pin-root", node.pin_root, "--rate-interval", "0"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        for owner in set(owner_of.values()):
            ips = sorted(ip for ip, o in owner_of.items() if o == owner)
            assert f"  {owner}: {', '.join(ips)}" in shown.stdout, shown.stdout
        metrics = lab.exec(node.name, ["curl", "-s", "--max-time", "3",
                                       "http://127.0.0.1:10249/metrics"],
                           capture_output=True, text=True, timeout=30).stdout  # fmt: skip
        for ip, owner in owner_of.items():
            assert f'xlb_lb_ip_announcer{{ip="{ip}",node="{owner}"}} 1.0' in metrics
