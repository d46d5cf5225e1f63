"""An IPv6-only lab (`xlb lab up --ip-family IPv6`): three nodes with IPv6 addresses only,
pods and Services of IPv6 only, the agents gossiping over IPv6. Each LoadBalancer IP is
answered by exactly its elected node, as a LAN host's neighbour solicitations find (scapy,
tests/netns/neighbour_probe.py), with advertisements as RFC 4861 §7.2.4 wants them; an owner that
dies is replaced, and one that comes back takes its addresses back without any round of
solicitations answered by two nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from controlplane.l2.election import owners
from controlplane.lab.lab import Lab
from controlplane.lab.scenarios import web_behind_load_balancers
from controlplane.lab.topology import CLIENT6
from controlplane.sources.manifests import load_cluster
from tests.netns.neighbours import NeighbourWatch, ask, lb_ips, macs_of
from tests.netns.test_lab import restart_and_settle, running_lab

MANIFEST = web_behind_load_balancers(4, replicas=3)


@pytest.fixture(scope="module")
def lab6(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab6")
    (d / "web.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=3, families=["IPv6"]) as lab:
        yield lab


def cluster_of(lab: Lab):
    return load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))


def elected(lab: Lab, live: set[str]) -> dict[str, str]:
    c = cluster_of(lab)
    return owners(c.services, c.slices, c.nodes, live, c.advertisements, c.pools)


def test_gossip_runs_over_ipv6_and_nothing_has_ipv4(lab6):
    state = lab6.load()
    assert all(":" in a for n in state.nodes for a in n.addresses)
    assert all(":" in ip for p in state.pods for ip in p.ips)
    for n in state.nodes:
        listening = subprocess.run(["ip", "netns", "exec", n.netns, "ss", "-Hlun", "sport = :7947"],
                                   capture_output=True, text=True).stdout  # fmt: skip
        assert f"[{n.addresses[0]}]:7947" in listening, listening
    assert lb_ips(lab6) and all(":" in ip for ip in lb_ips(lab6))


def test_each_lb_ip_is_answered_by_exactly_its_elected_node_over_ndp(lab6):
    ips = lb_ips(lab6)
    nodes = {n.name for n in lab6.load().nodes}
    want = elected(lab6, nodes)
    by_mac = macs_of(lab6)
    watch = ask(lab6.client_ns, ips, count=3)
    rounds = watch.rounds(by_mac)
    for ip in ips:
        for i in range(3):
            assert rounds.get((i, ip)) == {want[ip]}, (ip, i, rounds)
    for a in watch.result["answers"]:
        # RFC 4861 §7.2.4: a solicited advertisement goes back to the soliciting host;
        # §7.2.6: an unsolicited one (a takeover's) to all nodes, Solicited clear, Override
        # set; both carry the target link-layer address (its own MAC), hop limit 255
        if a["S"]:
            assert a["dst"] == CLIENT6, a
        else:
            assert a["dst"] == "ff02::1" and a["O"] == 1, a
        assert a["R"] == 0 and a["hlim"] == 255 and a["tll"] == a["mac"], a
    for ip in ips:  # and the address carries traffic to the pods
        out = lab6.exec("client", ["curl", "-s", "--max-time", "3", f"http://[{ip}]:8000/"],
                        capture_output=True, text=True)  # fmt: skip
        assert out.stdout.startswith("pod=web-"), (ip, out.stdout, out.stderr)


def test_a_dead_owner_is_replaced_and_takes_its_addresses_back_with_one_answer_a_round(lab6):
    ips = lb_ips(lab6)
    state = lab6.load()
    nodes = {n.name for n in state.nodes}
    before = elected(lab6, nodes)
    victim = before[ips[0]]
    after = elected(lab6, nodes - {victim})
    moved = sorted(ip for ip in ips if before[ip] == victim)
    by_mac = macs_of(lab6)
    node = next(n for n in state.nodes if n.name == victim)
    with NeighbourWatch(lab6.client_ns, moved, count=100) as watch:
        time.sleep(1.0)  # the prober is up and asking
        killed = time.monotonic()
        os.kill(node.agent_pid, signal.SIGKILL)
    rounds = watch.rounds(by_mac)
    after_kill = [i for i, at in enumerate(watch.sent_at) if at > killed]
    taken = [i for i in after_kill if all(rounds.get((i, ip)) == {after[ip]} for ip in moved)]
    assert taken, f"{victim}'s addresses were not taken over in 4 s: {rounds}"
    overlap = [i for i in after_kill if any(len(rounds.get((i, ip), ())) > 1 for ip in moved)]
    print(f"{victim} killed: its {len(moved)} addresses answered by the others "
          f"{watch.sent_at[taken[0]] - killed:.2f}s later; {len(overlap)} rounds of 50 ms "
          "answered by two (the dead agent's kernel answers for up to its 1 s grace)")  # fmt: skip
    # the restart (compile, first sync, settle) and the hand-back, asked every 50 ms
    with NeighbourWatch(lab6.client_ns, ips) as watch:
        time.sleep(0.5)
        restart_and_settle(lab6, victim)
    doubled = watch.doubled(by_mac)
    assert not doubled, f"two nodes answered one address: {sorted(doubled.items())[:5]}"
    rounds = watch.rounds(by_mac)
    last = watch.result["sent"] - 1
    assert all(rounds.get((last, ip)) == {before[ip]} for ip in ips), rounds
    silences = {ip: watch.longest_silence(ip) for ip in moved}
    print(
        f"{victim} back: none answered twice in {last + 1} rounds; longest silence of "
        f"its addresses during the hand-back {max(silences.values()):.2f}s"
    )
