"""Who answers address resolution on the lab's LAN, round by round (neighbour_probe.py run
in the client's namespace): for a with-block, or for a number of rounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from controlplane.lab.topology import CLIENT4, CLIENT6
from controlplane.sources.manifests import load_cluster

PROBE = Path(__file__).with_name("neighbour_probe.py")


class NeighbourWatch:
    """Questions for targets every interval from the client: count rounds, or (count 0)
    until the with-block ends. Then `result` holds what neighbour_probe.py printed."""

    def __init__(self, client_ns: str, targets: list[str], count: int = 0,
                 interval: float = 0.05) -> None:  # fmt: skip
        self.client_ns, self.targets = client_ns, list(targets)
        self.count, self.interval = count, interval
        self.result: dict = {}

    def __enter__(self) -> NeighbourWatch:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.client_ns}", sys.executable, str(PROBE),
             "eth0", CLIENT4, CLIENT6, str(self.count), str(self.interval), *self.targets],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        if self.count == 0:
            self.proc.send_signal(2)
        out, err = self.proc.communicate(timeout=self.count * self.interval + 30)
        assert out, err
        self.result = json.loads(out)

    @property
    def sent_at(self) -> list[float]:
        return self.result["sent_at"]

    def rounds(self, by_mac: dict[str, str]) -> dict[tuple[int, str], set[str]]:
        """(round, target) -> the nodes that answered it. Only answers to the question
        count: an owner's gratuitous ARP or unsolicited advertisement answers nobody's."""
        out: dict[tuple[int, str], set[str]] = {}
        for a in self.result["answers"]:
            if a["S"]:
                out.setdefault((a["i"], a["target"]), set()).add(by_mac.get(a["mac"], a["mac"]))
        return out

    def doubled(self, by_mac: dict[str, str]) -> dict[tuple[int, str], set[str]]:
        """The questions two nodes answered."""
        return {k: v for k, v in self.rounds(by_mac).items() if len(v) > 1}

    def longest_silence(self, target: str) -> float:
        """Seconds of the longest run of rounds in which nobody answered for target."""
        answered = {i for i, t in self.rounds({}) if t == target}
        run = best = 0
        for i in range(self.result["sent"]):
            run = 0 if i in answered else run + 1
            best = max(best, run)
        return best * self.interval


def ask(client_ns: str, targets: list[str], count: int = 3,
        interval: float = 0.05) -> NeighbourWatch:  # fmt: skip
    """count rounds of questions, finished."""
    with NeighbourWatch(client_ns, targets, count, interval) as watch:
        pass
    return watch


def link_mac(ns: str, dev: str = "eth0") -> str:
    """The MAC of dev in namespace ns."""
    shown = subprocess.run(["ip", "-n", ns, "-br", "link", "show", dev], capture_output=True,
                           text=True).stdout  # fmt: skip
    return shown.split()[2]


def macs_of(lab) -> dict[str, str]:
    """Each node's uplink MAC -> the node's name."""
    return {link_mac(n.netns): n.name for n in lab.load().nodes}


def lb_ips(lab) -> list[str]:
    """Every LoadBalancer IP the lab's Services were given, sorted."""
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
