"""Balanced placement in 3- and 5-node dual-stack labs (metallb#2284): 6 dual-stack
LoadBalancer Services, 12 addresses, from a pool annotated `xlb.io/l2-placement: balanced`.
Who answers is what the client's ARP and neighbour solicitations hear. No node answers for
more than ceil(12 / N) (the issue's bound is one more); when a node's agent is killed only
its addresses move, and the rest stay within ceil(12 / (N - 1)); when it comes back it takes
only what the others hold over the cap, and never two nodes answer one address once the
move is done. (With MetalLB's order the 4-node lab put 5 of the 12 on one node.)"""

from __future__ import annotations

import math
import os
import textwrap
import time
from collections import Counter

import pytest

from controlplane.sources.manifests import load_cluster
from tests.netns.neighbours import NeighbourWatch, ask, macs_of
from tests.netns.test_lab import running_lab

SERVICES = 6

MANIFEST = textwrap.dedent("""
    apiVersion: metallb.io/v1beta1
    kind: IPAddressPool
    metadata:
      name: lan
      namespace: metallb-system
      annotations: {xlb.io/l2-placement: balanced}
    spec: {addresses: [192.168.198.240/28, "fd00:198::f0/124"]}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      replicas: 4
      template:
        metadata: {labels: {app: web}}
        spec: {containers: [{name: web, ports: [{containerPort: 80}]}]}
""") + "".join(
    textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: lb-{i}}}
        spec:
          type: LoadBalancer
          ipFamilyPolicy: RequireDualStack
          selector: {{app: web}}
          ports: [{{name: http, port: 8000, targetPort: 80}}]
    """)
    for i in range(SERVICES)
)


@pytest.fixture(scope="module", params=[3, 5], ids=lambda n: f"{n}-nodes")
def lab(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("placement")
    (d / "lb.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=request.param) as lab:
        yield lab


def lb_ips(lab) -> list[str]:
    c = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    return sorted(ip for s in c.services for ip in s.ingress_ips)


def answering(lab, ips: list[str], rounds: int = 3) -> dict[str, set[str]]:
    """Each address -> the nodes that answered the client's questions for it (the last of
    the rounds asked, so that a hand-over still under way shows as two)."""
    by_mac = macs_of(lab)
    heard = ask(lab.client_ns, ips, count=rounds, interval=0.1).rounds(by_mac)
    last = rounds - 1
    return {ip: heard.get((last, ip), set()) for ip in ips}


def settled_answers(lab, ips: list[str], timeout: float = 20) -> dict[str, str]:
    """Once every address is answered by exactly one node, twice in a row: address -> node."""
    deadline, before, seen = time.monotonic() + timeout, None, {}
    while time.monotonic() < deadline:
        seen = answering(lab, ips)
        if all(len(v) == 1 for v in seen.values()):
            now = {ip: next(iter(v)) for ip, v in seen.items()}
            if now == before:
                return now
            before = now
        time.sleep(0.3)
    raise AssertionError(f"answers never settled: {seen}")


def test_placement_is_bounded_and_a_dead_node_moves_only_its_own(lab):
    ips, nodes = lb_ips(lab), len(lab.load().nodes)
    assert len(ips) == 2 * SERVICES and any(":" in ip for ip in ips)
    placed = settled_answers(lab, ips)
    loads = Counter(placed.values())
    print(f"placement: {dict(sorted(loads.items()))}")
    assert max(loads.values()) <= math.ceil(len(ips) / nodes)
    assert set(loads) == {n.name for n in lab.load().nodes}

    victim = max(loads, key=lambda n: (loads[n], n))
    node = next(n for n in lab.load().nodes if n.name == victim)
    os.kill(node.agent_pid, 9)
    time.sleep(1.5)  # the heartbeat grace (1 s): the kernel stops answering for the dead agent
    after = settled_answers(lab, ips)
    moved = {ip for ip in ips if after[ip] != placed[ip]}
    print(f"{victim} killed: moved {sorted(moved)}; now {dict(Counter(after.values()))}")
    assert moved == {ip for ip, n in placed.items() if n == victim}
    assert victim not in after.values()
    assert max(Counter(after.values()).values()) <= math.ceil(len(ips) / (nodes - 1))

    by_mac = macs_of(lab)
    with NeighbourWatch(lab.client_ns, ips, interval=0.05) as watch:
        lab.restart_agent(victim)
        deadline = time.monotonic() + 60
        while victim not in set().union(*answering(lab, ips, 1).values()):
            assert time.monotonic() < deadline, f"{victim} never took an address back"
            time.sleep(0.5)
        back = settled_answers(lab, ips)
    loads = Counter(back.values())
    moved = {ip for ip in ips if back[ip] != after[ip]}
    gaps = {ip: watch.longest_silence(ip) for ip in moved}
    print(f"{victim} back: took {sorted(moved)}; now {dict(sorted(loads.items()))}; longest "
          f"silence of a moved address {max(gaps.values(), default=0):.2f}s")  # fmt: skip
    assert max(loads.values()) <= math.ceil(len(ips) / nodes)
    assert max(loads.values()) - min(loads.values()) <= 1
    assert moved and all(back[ip] == victim for ip in moved)  # only to it, its share
    # the holder lets go before the taker answers: never two at once
    assert watch.doubled(by_mac) == {}
    assert max(gaps.values()) < 3.0, gaps
