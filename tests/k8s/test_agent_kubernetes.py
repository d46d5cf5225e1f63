"""The agent over the Kubernetes source, programming the real maps."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from controlplane.agent import Agent, AgentConfig
from controlplane.model.objects import Protocol
from controlplane.model.state import Scope
from controlplane.sources.kubernetes import KubernetesSource
from tests.helpers import wait_until
from tests.k8s.apiserver import ApiServer
from tests.k8s.test_source import NODE, eps, svc
from tests.test_agent import SyncerDatapath, running


@pytest.fixture
def cluster(syncer):
    api = ApiServer()
    api.apply(NODE)
    cfg = client.Configuration()
    cfg.host = api.url
    source = KubernetesSource(client.ApiClient(cfg), watch_timeout=5, backoff=(0.05, 1.0))
    agent = Agent(
        AgentConfig("node-1", "eth0", "/", "/", poll_interval=0.05, min_interval=0.2),
        source,
        SyncerDatapath(syncer),
    )
    with running(agent, join=10):
        yield api, agent, syncer
    api.close()


def key(ip, port=80):
    return (ip, port, Protocol.TCP, Scope.INTERNAL)


def maps_state(maps):
    return (maps.read_services(), maps.read_slots(), maps.read_backends())


def test_programs_what_the_api_holds_and_follows_it(cluster):
    api, agent, syncer = cluster
    api.apply(svc("web", "10.96.3.10"))
    api.apply(eps("web", ["10.244.1.5", "10.244.2.5"]))
    wait_until(
        lambda: (
            key("10.96.3.10") in syncer.frontends and syncer.frontends[key("10.96.3.10")].count == 2
        )
    )
    api.apply(eps("web", ["10.244.1.5"]))
    wait_until(lambda: syncer.frontends[key("10.96.3.10")].count == 1)
    api.delete("Service", "web")
    wait_until(lambda: key("10.96.3.10") not in syncer.frontends)


def test_a_thousand_events_in_a_second_become_a_handful_of_syncs(cluster):
    api, agent, syncer = cluster
    wait_until(lambda: agent.syncs >= 1)
    start, began = agent.syncs, time.monotonic()
    for i in range(1000):
        api.apply(svc(f"burst{i}", f"10.97.{i // 250}.{i % 250 + 1}"))
        time.sleep(0.001)
    wait_until(lambda: key("10.97.3.250") in syncer.frontends, timeout=15)
    time.sleep(0.5)
    syncs, took = agent.syncs - start, time.monotonic() - began
    print(f"1000 Services in {took:.2f} s became {syncs} syncs")
    # at most one sync per --min-sync-interval, whatever the machine's speed
    assert syncs <= took / agent.cfg.min_interval + 2, (syncs, took)
    assert sum(1 for k in syncer.frontends if k[0].startswith("10.97.")) == 1000


def test_an_api_outage_of_30_seconds_changes_nothing_in_the_maps(cluster):
    api, agent, syncer = cluster
    api.apply(svc("web", "10.96.3.20"))
    api.apply(eps("web", ["10.244.1.5"]))
    wait_until(lambda: key("10.96.3.20") in syncer.frontends)
    time.sleep(0.5)
    before, syncs = maps_state(syncer.maps), agent.syncs
    api.down = True
    api.cut_watches()
    time.sleep(30)
    assert maps_state(syncer.maps) == before and agent.syncs == syncs
    code, body = agent.health.status()
    assert code == 200 and set(body["sourceErrors"]) == {
        "Service",
        "EndpointSlice",
        "Node",
        "ServiceCIDR",
        "IPAddressPool",
        "L2Advertisement",
    }
    api.down = False
    api.apply(eps("web", ["10.244.1.6"]))
    wait_until(
        lambda: (
            syncer.maps.read_backends()
            and {b.address for b in syncer.maps.read_backends().values()} == {"10.244.1.6"}
        ),
        timeout=10,
    )


def test_a_problem_becomes_one_warning_event_on_its_service(cluster):
    api, agent, syncer = cluster
    api.apply(svc("good", "10.96.3.30"))
    bad = svc("bad", "10.96.3.31")
    bad["spec"]["sessionAffinity"] = "Cookie"
    api.apply(bad)
    wait_until(lambda: key("10.96.3.30") in syncer.frontends)
    wait_until(lambda: api.events)
    api.apply(svc("good2", "10.96.3.32"))  # another sync: the same problem is not re-posted
    wait_until(lambda: key("10.96.3.32") in syncer.frontends)
    (event,) = api.events
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": "default",
        "name": "bad",
    }
    assert event["type"] == "Warning" and event["reason"] == "XlbInvalidSpec"
    assert event["message"].startswith("spec.sessionAffinity: 'Cookie'")
    assert event["reportingComponent"] == "xlb" and event["reportingInstance"] == "node-1"


def test_a_slow_events_api_never_delays_the_datapath(cluster):
    """Each Event takes the API server 2 s: ten broken Services' Warnings queue behind one
    another, while the good Service beside them is programmed at once."""
    api, agent, syncer = cluster
    api.event_delay = 5.0
    for i in range(10):
        bad = svc(f"bad{i}", f"10.96.4.{i + 1}")
        bad["spec"]["sessionAffinity"] = "Cookie"
        api.apply(bad)
    wait_until(lambda: len(api.events) >= 1, timeout=10)  # the sender is busy with them
    start = time.monotonic()
    api.apply(svc("good", "10.96.4.100"))
    wait_until(lambda: key("10.96.4.100") in syncer.frontends, timeout=5)
    took = time.monotonic() - start
    print(f"programmed {took:.2f} s after it was created, with Events 5 s each behind it")
    assert took < 4.0  # before the first Event could have been sent: it waited on none
    assert len(api.events) < 10  # the Warnings are still being sent
    api.event_delay = 0.0
