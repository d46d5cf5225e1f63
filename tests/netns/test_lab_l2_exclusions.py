"""MetalLB's node exclusions, live, in a 3-node dual-stack lab: a node labelled
node.kubernetes.io/exclude-from-external-load-balancers (any value), and one whose
NetworkUnavailable condition is True, announce no LoadBalancer IP; their addresses move to
the others and nothing else moves; when both are cleared every address is back where it
was (MetalLB's order, the default, is a function of the eligible nodes). The labels and the
condition reach the agents as `kubectl label node` and a kubelet would: a Node in the lab's
manifests patches the lab's node of that name. Who answers is what the client's ARP and
neighbour solicitations hear; each moved address is then fetched by the client."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from controlplane.lab.scenarios import node, web_behind_load_balancers
from controlplane.model.objects import LABEL_EXCLUDE_LB
from tests.netns.neighbours import lb_ips, settled_answers
from tests.netns.test_lab import get, running_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("exclusions")
    (d / "web.yaml").write_text(
        web_behind_load_balancers(3, replicas=3, family_policy="RequireDualStack")
    )
    with running_lab(d, nodes=3) as lab:
        yield lab, d


def patch_nodes(lab, d, *nodes: str) -> float:
    """The Node patches in nodes.yaml (none: the file is empty), applied; when."""
    (d / "nodes.yaml").write_text("\n---\n".join(nodes))
    lab.apply(log=lambda *_: None)
    return time.monotonic()


def answers_without(lab, ips: list[str], gone: set[str], since: float, timeout: float = 30):
    """Once no address is answered by a node in gone (and the answers are settled):
    address -> node, and how long that took."""
    deadline = time.monotonic() + timeout
    while True:
        now = settled_answers(lab, ips)
        if not gone & set(now.values()):
            return now, time.monotonic() - since
        assert time.monotonic() < deadline, f"{sorted(gone)} still answer: {now}"
        time.sleep(0.2)


def fetched_through(lab, ips: list[str]) -> None:
    for ip in ips:
        get(lab, "client", ip, 8000)


def test_excluded_and_network_unavailable_nodes_announce_nothing_and_get_it_back(lab):
    lab, d = lab
    ips = lb_ips(lab)
    assert len(ips) == 6 and sum(":" in ip for ip in ips) == 3
    placed = settled_answers(lab, ips)
    loads = Counter(placed.values())
    print(f"placed: {dict(sorted(loads.items()))}")
    first = max(sorted(loads), key=lambda n: loads[n])

    since = patch_nodes(lab, d, node(first, labels={LABEL_EXCLUDE_LB: ""}))
    after, took = answers_without(lab, ips, {first}, since)
    moved = {ip for ip in ips if after[ip] != placed[ip]}
    print(f"{first} labelled excluded: moved {sorted(moved)}, settled {took:.2f}s after the patch")
    assert moved == {ip for ip, n in placed.items() if n == first}
    fetched_through(lab, sorted(moved))

    second = max(sorted(set(after.values())), key=lambda n: Counter(after.values())[n])
    since = patch_nodes(
        lab,
        d,
        node(first, labels={LABEL_EXCLUDE_LB: "true"}),
        node(second, conditions={"NetworkUnavailable": "True", "Ready": "True"}),
    )
    both, took = answers_without(lab, ips, {first, second}, since)
    moved = {ip for ip in ips if both[ip] != after[ip]}
    (third,) = {n.name for n in lab.load().nodes} - {first, second}
    print(f"{second} NetworkUnavailable too: moved {sorted(moved)}, settled {took:.2f}s after")
    assert moved == {ip for ip, n in after.items() if n == second}
    assert set(both.values()) == {third}
    fetched_through(lab, ips)

    # a condition that is False, and a label on another key, exclude nothing
    since = patch_nodes(
        lab,
        d,
        node(first, labels={"example.com/rack": "r1"}),
        node(second, conditions={"NetworkUnavailable": "False"}),
    )
    deadline = time.monotonic() + 30
    while (back := settled_answers(lab, ips)) != placed:
        assert time.monotonic() < deadline, f"never back to {placed}: {back}"
        time.sleep(0.2)
    print(f"both cleared: back as placed, seen {time.monotonic() - since:.2f}s after the patch")
    fetched_through(lab, ips)
