"""The cluster's LoadBalancer IP allocator, end to end over the Kubernetes source: the Lease
holder writes status.loadBalancer.ingress and Events through the real client, the agent
announces what the status says in the real maps, and nobody else writes."""

from __future__ import annotations

import contextlib
import time

import pytest
from kubernetes import client

from controlplane.agent import Agent, AgentConfig
from controlplane.datapath.maps import get_addr
from controlplane.l2.allocator import Allocator
from controlplane.l2.lease import LeaseElector
from controlplane.l2.members import Members, MembersConfig
from controlplane.sources.kubernetes import KubernetesSource
from tests.helpers import wait_until
from tests.k8s.apiserver import ApiServer
from tests.k8s.test_source import NODE
from tests.l2.test_members import KEY, free_ports
from tests.test_agent import SyncerDatapath, running

POOL = {
    "apiVersion": "metallb.io/v1beta1",
    "kind": "IPAddressPool",
    "metadata": {"name": "lan", "namespace": "metallb-system"},
    "spec": {"addresses": ["192.168.198.240-192.168.198.241"]},
}
LEASE = {"duration": 1.0, "renew_deadline": 0.6, "retry": 0.1}
STATUS = ("PATCH", "/api/v1/services", "status")


def lb(name, cluster_ip, **spec):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": cluster_ip, "ports": [{"port": 80}], **spec},
    }


def api_client(api):
    cfg = client.Configuration()
    cfg.host = api.url
    return client.ApiClient(cfg)


@contextlib.contextmanager
def allocating_agent(api, syncer, port=None):
    """node-1's agent over the API with gossip on 127.0.0.1:port (default: a free one), a
    Lease elector and the allocator, running for the block."""
    source = KubernetesSource(api_client(api), watch_timeout=5, backoff=(0.05, 1.0))
    lease = LeaseElector(api_client(api), "node-1", **LEASE)
    members = Members(MembersConfig("node-1", "127.0.0.1", port or free_ports(1)[0], KEY))
    agent = Agent(
        AgentConfig("node-1", "eth0", "/", "/", poll_interval=0.05, min_interval=0.1),
        source,
        SyncerDatapath(syncer),
        members=members,
        allocator=Allocator(lease, source, "node-1"),
    )
    members.start()
    lease.start()
    try:
        with running(agent, join=10):
            yield agent
    finally:
        lease.stop()
        members.stop()
        syncer.sync_lb_ips(set())


@pytest.fixture
def api():
    server = ApiServer()
    server.apply(NODE)
    server.apply(POOL)
    yield server
    server.close()


def ingress(api, name):
    status = api.objects["/api/v1/services"][("default", name)].get("status") or {}
    return [i["ip"] for i in (status.get("loadBalancer") or {}).get("ingress") or []]


def events(api, name, reason=None):
    return [
        e
        for e in api.events
        if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)
    ]


def announced(syncer):
    return {get_addr(k) for k in syncer.maps.lb_ips}


def test_an_ip_from_the_pool_in_status_with_an_event_and_announced(api, syncer):
    with allocating_agent(api, syncer):
        api.apply(lb("web", "10.96.8.1"))
        wait_until(lambda: ingress(api, "web") == ["192.168.198.240"])
        wait_until(lambda: announced(syncer) == {"192.168.198.240"})
        # posted just after the status; and the node that takes the address says so, as
        # MetalLB's speaker does (nodeAssigned)
        wait_until(lambda: len(events(api, "web")) == 2)
        allocated, assigned = sorted(events(api, "web"), key=lambda e: e["reason"] != "IPAllocated")
        assert (allocated["type"], allocated["reason"]) == ("Normal", "IPAllocated")
        assert "192.168.198.240" in allocated["message"]
        assert (assigned["type"], assigned["reason"]) == ("Normal", "nodeAssigned")
        assert "192.168.198.240" in assigned["message"] and "node-1" in assigned["message"]
        # a requested address; another controller's class is left alone
        api.apply(lb("fixed", "10.96.8.2", loadBalancerIP="192.168.198.241"))
        api.apply(lb("theirs", "10.96.8.3", loadBalancerClass="example.com/cloud"))
        wait_until(lambda: ingress(api, "fixed") == ["192.168.198.241"])
        wait_until(lambda: announced(syncer) == {"192.168.198.240", "192.168.198.241"})
        assert ingress(api, "theirs") == [] and events(api, "theirs") == []
        assert api.writes[STATUS] == 2


def test_a_service_without_an_address_gets_one_warning_saying_why(api, syncer):
    with allocating_agent(api, syncer):
        api.apply(lb("a", "10.96.8.1"))
        api.apply(lb("b", "10.96.8.2"))
        api.apply(lb("outside", "10.96.8.3", loadBalancerIP="10.1.2.3"))
        api.apply(lb("full", "10.96.8.4"))  # the pool has two addresses
        wait_until(lambda: events(api, "outside") and events(api, "full"))
        (outside,) = events(api, "outside")
        assert outside["type"] == "Warning" and outside["reason"] == "AllocationFailed"
        assert "10.1.2.3 is in no address pool" in outside["message"]
        (full,) = events(api, "full")
        assert "no free IPv4 address in lan" in full["message"]
        assert ingress(api, "outside") == ingress(api, "full") == []
        # other syncs do not repeat them
        api.apply(lb("c", "10.96.8.5", loadBalancerIP="192.168.198.240"))
        wait_until(lambda: events(api, "c", "AllocationFailed"))
        assert len(events(api, "full")) == len(events(api, "outside")) == 1


def test_leaving_loadbalancer_releases_the_address_for_the_next(api, syncer):
    with allocating_agent(api, syncer):
        api.apply(lb("a", "10.96.8.1"))
        api.apply(lb("b", "10.96.8.2"))
        wait_until(lambda: ingress(api, "a") and ingress(api, "b"))
        api.apply(lb("c", "10.96.8.3"))
        wait_until(lambda: events(api, "c", "AllocationFailed"))
        freed = ingress(api, "a")
        plain = lb("a", "10.96.8.1")
        plain["spec"]["type"] = "ClusterIP"
        plain["status"] = api.objects["/api/v1/services"][("default", "a")]["status"]
        api.apply(plain)
        wait_until(lambda: ingress(api, "a") == [] and ingress(api, "c") == freed)
        wait_until(lambda: events(api, "a", "IPReleased"))
        wait_until(lambda: announced(syncer) == set(ingress(api, "b") + freed))


def test_only_the_lease_holder_allocates_and_another_takes_over_when_it_dies(api, syncer):
    other = LeaseElector(api_client(api), "node-2", **LEASE)
    other.start()
    wait_until(lambda: other.leading)
    try:
        with allocating_agent(api, syncer) as agent:
            api.apply(lb("web", "10.96.8.1"))
            wait_until(lambda: any(k[0] == "10.96.8.1" for k in syncer.frontends))
            # an allocation round that saw the Service has ended (and written nothing)
            done = lambda: agent.allocator.done.services if agent.allocator.done else []  # noqa: E731
            wait_until(lambda: any(s.name == "web" for s in done()))
            assert ingress(api, "web") == [] and api.writes[STATUS] == 0  # node-2 holds it
            other.stopping.set()  # node-2 crashes: its Lease expires after 1 s
            other.thread.join()
            took = wait_until(lambda: ingress(api, "web") == ["192.168.198.240"], timeout=5)
            print(f"node-1 allocated {took:.2f}s after the Lease holder died (duration 1.0 s)")
            assert api.writes[STATUS] == 1
    finally:
        other.stop()


def test_kubernetes_failover_moves_announcements_then_allocation(api, syncer):
    """Two nodes over the API. node-2 holds the Lease and allocates; each node announces
    its share. node-2 dies (gossip, Lease and allocator gone at once): node-1 answers for
    every address within the gossip's second, and allocates once the Lease expires."""
    import threading

    from controlplane.l2.election import owner

    for i in (1, 2):
        api.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"node-{i}"},
                "status": {"addresses": [{"type": "InternalIP", "address": f"127.0.0.{i}"}]},
            }
        )
    pool = dict(POOL, spec={"addresses": ["192.168.198.240/29"]})
    api.apply(pool)
    port = free_ports(1)[0]
    # node-2: gossip, the Lease and the allocator, as its agent runs them
    m2 = Members(
        MembersConfig("node-2", "127.0.0.2", port, KEY, peers={"node-1": ("127.0.0.1", port)})
    )
    lease2 = LeaseElector(api_client(api), "node-2", **LEASE)
    source2 = KubernetesSource(api_client(api), watch_timeout=5, backoff=(0.05, 1.0))
    alloc2 = Allocator(lease2, source2, "node-2")
    stop2 = threading.Event()

    def allocate_loop():
        while not stop2.wait(0.05):
            if source2.ready:
                alloc2.sync(source2.snapshot())

    m2.start()
    lease2.start()
    source2.start()
    loop2 = threading.Thread(target=allocate_loop, daemon=True)
    loop2.start()
    wait_until(lambda: lease2.leading)
    try:
        with allocating_agent(api, syncer, port):
            for i in range(6):
                api.apply(lb(f"lb{i}", f"10.96.9.{i + 1}"))
            wait_until(lambda: all(ingress(api, f"lb{i}") for i in range(6)), timeout=5)
            ips = {ingress(api, f"lb{i}")[0] for i in range(6)}
            mine = {ip for ip in ips if owner(ip, {"node-1", "node-2"}) == "node-1"}
            assert mine and mine != ips
            wait_until(lambda: announced(syncer) == mine)
            wait_until(lambda: events(api, "lb0"))
            assert {e["reportingInstance"] for e in events(api, "lb0")} == {"node-2"}
            stop2.set()  # node-2 dies
            m2.stop()
            lease2.stopping.set()
            t0 = time.monotonic()
            took = wait_until(lambda: announced(syncer) == ips)
            print(f"node-1 answers for node-2's addresses {took:.2f}s after it died")
            assert took <= 5.0  # generous: the failover target is measured in bench/failover
            api.apply(lb("late", "10.96.9.9"))
            wait_until(lambda: ingress(api, "late"), timeout=5)
            print(f"node-1 allocated {time.monotonic() - t0:.2f}s after node-2 died")
            wait_until(lambda: events(api, "late"))  # posted just after the status
            assert {e["reportingInstance"] for e in events(api, "late")} == {"node-1"}
            wait_until(lambda: announced(syncer) == ips | set(ingress(api, "late")))
    finally:
        stop2.set()
        loop2.join(2)
        source2.stop()
        lease2.stop()
        if not m2.stopping.is_set():
            m2.stop()
