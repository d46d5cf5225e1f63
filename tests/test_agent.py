"""The agent loop against the real maps: bursts coalesce, changes arrive, problems are
reported once and never stop the loop."""

from __future__ import annotations

import contextlib
import logging
import textwrap
import threading
import time

import pytest

from controlplane.agent import Agent, AgentConfig
from controlplane.model.objects import Protocol
from controlplane.model.state import Scope
from controlplane.sources.files import ManifestSource, ManifestWatch
from tests.helpers import wait_until

NODE = textwrap.dedent("""
    apiVersion: v1
    kind: Node
    metadata: {name: node-1}
    status: {addresses: [{type: InternalIP, address: 192.168.198.201}]}
""")


def service(i: int, port: int = 80) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: s{i}}}
        spec: {{clusterIP: 10.96.1.{i}, ports: [{{port: {port}}}]}}
    """)


class SyncerDatapath:
    """The agent's view of a datapath: the real Syncer over the real pinned maps."""

    def __init__(self, syncer):
        self.syncer = syncer

    def apply(self, state, addr4, addr6):
        return self.syncer.sync(state, addr4, addr6, "02:00:00:00:aa:01")

    def announce(self, owned):
        return self.syncer.sync_lb_ips(owned)

    def heartbeat(self):
        self.syncer.heartbeat()

    def held_lb_ips(self):
        return self.syncer.held_lb_ips()

    def silence(self):
        self.syncer.silence()


@contextlib.contextmanager
def running(agent: Agent, join: float = 5.0):
    """The agent's loop in a thread for the duration of the block, stopped however it ends."""
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop.set()
        thread.join(join)


@pytest.fixture
def agent(tmp_path, syncer):
    (tmp_path / "node.yaml").write_text(NODE)
    a = Agent(
        AgentConfig("node-1", "eth0", "/", "/", poll_interval=0.05, min_interval=0.2),
        ManifestSource([str(tmp_path)]),
        SyncerDatapath(syncer),
    )
    with running(a, join=2):
        yield a, tmp_path, syncer


def test_watch_notices_added_rewritten_and_removed_files(tmp_path):
    watch = ManifestWatch([tmp_path])
    assert watch.changed()  # the first look always counts
    assert not watch.changed()
    (tmp_path / "a.yaml").write_text(service(1))
    assert watch.changed()
    (tmp_path / "a.yaml").write_text(service(1, 81))
    assert watch.changed()
    (tmp_path / "a.yaml").unlink()
    assert watch.changed() and not watch.changed()


def test_a_burst_of_changes_becomes_few_syncs_and_the_last_state_wins(agent):
    a, d, syncer = agent
    wait_until(lambda: a.syncs >= 1)
    start, began = a.syncs, time.monotonic()
    for i in range(1, 101):  # 100 edits in about a second
        (d / f"s{i}.yaml").write_text(service(i))
        time.sleep(0.01)
    wait_until(lambda: ("10.96.1.100", 80, Protocol.TCP, Scope.INTERNAL) in syncer.frontends)
    time.sleep(0.4)
    syncs, took = a.syncs - start, time.monotonic() - began
    print(f"100 edits in {took:.2f} s became {syncs} syncs")
    # at most one sync per min_interval, whatever the machine's speed
    assert syncs <= took / a.cfg.min_interval + 2, (syncs, took)
    assert len([k for k in syncer.frontends if k[0].startswith("10.96.1.")]) == 100


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_bad_objects_are_logged_once_and_the_rest_is_programmed(agent):
    a, d, syncer = agent
    # a handler of its own: global logging state (caplog, other tests' configs) cannot hide it
    logger, lines = logging.getLogger("xlb.agent"), Lines()
    logger.disabled = False
    logger.addHandler(lines)
    try:
        # addresses no other test uses: the maps are shared and read back by each Syncer
        (d / "bad.yaml").write_text(service(207).replace("ports:", "portz:"))
        (d / "good.yaml").write_text(service(208))
        wait_until(lambda: ("10.96.1.208", 80, Protocol.TCP, Scope.INTERNAL) in syncer.frontends)
        (d / "good2.yaml").write_text(service(209))
        wait_until(lambda: ("10.96.1.209", 80, Protocol.TCP, Scope.INTERNAL) in syncer.frontends)
    finally:
        logger.removeHandler(lines)
    about = [x for x in lines.lines if "s207" in x]
    assert len(about) == 2  # the unknown field and the missing ports, once each
    assert all("Service default/s207" in x for x in about)


class FailingDatapath(SyncerDatapath):
    """The real maps behind a switch: while broken, every sync fails as a full map would."""

    def __init__(self, syncer):
        super().__init__(syncer)
        self.broken = True
        self.tries: list[float] = []

    def apply(self, state, addr4, addr6):
        self.tries.append(time.monotonic())
        if self.broken:
            from controlplane.datapath.sync import SyncError

            raise SyncError("the services map is full")
        return super().apply(state, addr4, addr6)


def test_a_sync_that_keeps_failing_backs_off_and_recovers(tmp_path, syncer, caplog):
    (tmp_path / "node.yaml").write_text(NODE + "---" + service(1))
    datapath = FailingDatapath(syncer)
    a = Agent(
        AgentConfig("node-1", "eth0", "/", "/", poll_interval=0.02, min_interval=0.02),
        ManifestSource([str(tmp_path)]),
        datapath,
    )
    with caplog.at_level(logging.ERROR), running(a, join=2):
        time.sleep(3.5)
        tries = list(datapath.tries)
        gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
        print(f"{len(tries)} tries in 3.5 s, gaps {[round(g, 2) for g in gaps]}")
        # 0.2, 0.4, 0.8, 1.6 s apart: a handful, not one every poll (175 at 0.02 s)
        assert 3 <= len(tries) <= 7, tries
        assert all(later >= earlier * 1.5 for earlier, later in zip(gaps, gaps[1:], strict=False))
        assert a.metrics.sync_failures._value.get() == len(tries)
        assert "SyncError: the services map is full" in caplog.text
        assert caplog.text.count("Traceback") <= 1  # the traceback once, not every try
        datapath.broken = False
        wait_until(lambda: ("10.96.1.1", 80, Protocol.TCP, Scope.INTERNAL) in syncer.frontends, 5)
        wait_until(lambda: a.failures == 0, 2)  # reset once the whole round has returned
