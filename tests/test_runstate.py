"""The agent's record for `xlb status`: written whole, read back with whether its agent runs,
and rendered with the policy's meaning; a killed agent's record says it is stale."""

from __future__ import annotations

import os
import subprocess

from controlplane import runstate
from controlplane.datapath.status import agent_lines


def test_a_record_round_trips_and_a_dead_agents_record_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv(runstate.RUN_DIR_ENV, str(tmp_path))
    pin_root = "/sys/fs/bpf/xlb-test-record"
    assert runstate.read(pin_root) is None
    record = {"pid": os.getpid(), "node": "node-1", "externalIPs": "deny",
              "refusedExternalIPs": ["default/ext: not served: 198.51.100.7: denied"]}  # fmt: skip
    runstate.write(pin_root, record)
    assert runstate.read(pin_root) == {**record, "running": True}
    assert list(tmp_path.iterdir()) == [runstate.record_path(pin_root)]  # no temporary left
    lines = agent_lines(runstate.read(pin_root))
    assert lines == [
        f"agent: pid {os.getpid()} for node node-1 (running)",
        "externalIPs (--external-ips deny): none (DenyServiceExternalIPs); 1 refused",
        "  default/ext: not served: 198.51.100.7: denied",
    ]
    runstate.write(pin_root, {**record, "ready": False})
    assert agent_lines(runstate.read(pin_root))[0].endswith(
        "(running, not ready yet (first sync, gossip settle))"
    )
    runstate.write(pin_root, {**record, "ready": True})
    assert agent_lines(runstate.read(pin_root))[0].endswith("(running, ready)")
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    runstate.write(pin_root, {**record, "pid": dead.pid})
    assert runstate.read(pin_root)["running"] is False
    assert "(not running (its record is stale))" in agent_lines(runstate.read(pin_root))[0]
    runstate.remove(pin_root)
    assert runstate.read(pin_root) is None
    assert agent_lines(None) == ["agent: no record (no agent has run on this datapath since boot)"]


def test_a_cidr_policy_says_what_it_admits():
    lines = agent_lines({"pid": 1, "node": "n", "externalIPs": "203.0.113.0/24", "running": True})
    assert lines[1] == (
        "externalIPs (--external-ips 203.0.113.0/24): only within 203.0.113.0/24; 0 refused"
    )
