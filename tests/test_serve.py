"""healthz, metrics, proxyMode and healthCheckNodePorts: exactly the codes and bodies that
kube-proxy's users and tools expect."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request

import pytest

from controlplane.model.objects import EndpointSlice
from controlplane.model.parse import parse_node
from controlplane.model.state import DesiredState, HealthCheck
from controlplane.serve import Endpoints, Health, HealthCheckNodePorts, Metrics
from tests.bpf.test_xdp_lb import NODE4, NODE6, frontend, local
from tests.helpers import eventually


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def test_health_before_first_sync_after_it_and_with_a_stale_update():
    clock = Clock()
    h = Health(timeout=60, clock=clock)
    code, body = h.status()
    assert code == 503 and set(body) == {"lastUpdated", "currentTime", "healthy", "nodeEligible"}
    h.updated()
    assert h.status()[0] == 200
    h.queued()
    clock.t += 59
    assert h.status()[0] == 200  # an update waiting, but not for long
    clock.t += 2
    code, body = h.status()
    assert code == 503 and body["currentTime"] == "2023-11-14T22:14:21.000000Z"
    h.updated()
    assert h.status()[0] == 200


@pytest.fixture
def served(maps, syncer):
    syncer.sync(
        DesiredState(frontends=(frontend(NODE4, 30123, "TCP", [local("10.244.1.5", 8080)]),)),
        NODE4,
        NODE6,
    )
    health, metrics = Health(), Metrics(lambda: maps)
    eps = Endpoints(health, metrics, "127.0.0.1", 0, 0)
    yield health, metrics, eps
    eps.close()


def test_healthz_and_livez_over_http(served):
    health, _, eps = served
    base = f"http://127.0.0.1:{eps.healthz.port}"
    code, ctype, text = fetch(f"{base}/healthz")
    assert (code, ctype) == (503, "application/json")
    health.updated()
    for path in ("/healthz", "/livez"):
        code, _, text = fetch(base + path)
        body = json.loads(text)
        assert code == 200 and body["healthy"] is True
        assert body.get("nodeEligible") is (True if path == "/healthz" else None)
        assert body["lastUpdated"].endswith("Z") and body["currentTime"].endswith("Z")
    assert fetch(f"{base}/other")[0] == 404


def test_proxy_mode_and_metrics_over_http(served):
    _, metrics, eps = served
    base = f"http://127.0.0.1:{eps.metrics_server.port}"
    assert fetch(f"{base}/proxyMode")[::2] == (200, "xlb")
    slices = [
        EndpointSlice("default", "web-1", "web", "IPv4", trigger_time="2020-01-01T00:00:00Z"),
        EndpointSlice("default", "web-2", "web", "IPv6", trigger_time="2020-01-01T00:00:01Z"),
    ]
    both = ("IPv4", "IPv6")
    metrics.synced(0.004, 1, slices, both)
    metrics.synced(0.002, 1, slices, both)  # the same trigger is observed once
    code, ctype, text = fetch(f"{base}/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    for family in both:  # kube-proxy's ip_family label (1.33+)
        label = f'{{ip_family="{family}"}}'
        assert f"kubeproxy_sync_proxy_rules_duration_seconds_count{label} 2.0" in text
        assert f"kubeproxy_network_programming_duration_seconds_count{label} 1.0" in text
        assert f"kubeproxy_sync_proxy_rules_last_timestamp_seconds{label}" in text
    assert (
        'xlb_frontend_packets_total{frontend="192.168.198.201:30123",protocol="TCP",'
        'scope="external"}'
    ) in text
    assert 'xlb_packets_not_balanced_total{reason="pass_no_service"}' in text


def node(taints: list[str] = (), deleted: bool = False):
    """kube-proxy's makeNode with tweakTainted / tweakDeleted, parsed as the API has it."""
    meta: dict = {"name": "node-1"}
    if deleted:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    obj = {"kind": "Node", "metadata": meta, "spec": {"taints": [
        {"key": k, "effect": "NoSchedule"} for k in taints]}}  # fmt: skip
    parsed, diags = parse_node(obj)
    assert parsed is not None and not diags
    return parsed


# kube-proxy's TestHealthzServer / TestLivezServer after the proxy updates (healthy): the
# node in turn; /healthz's code and nodeEligible; /livez stays 200 and says nothing of it
NODE_SEQUENCE = [
    ("tainted in any other way", node(["other"]), 200, True),
    (
        "the cluster autoscaler's ToBeDeletedByClusterAutoscaler taint",
        node(["ToBeDeletedByClusterAutoscaler"]),
        503,
        False,
    ),  # fmt: skip
    ("tainted in any other way again", node(["other"]), 200, True),
    ("deleted (a deletionTimestamp)", node(deleted=True), 503, False),
    ("back, untainted", node(), 200, True),
    ("gone from the API after it was seen", None, 503, False),
]


def test_healthz_follows_the_node_being_deleted_and_livez_does_not(served):
    health, _, eps = served
    base = f"http://127.0.0.1:{eps.healthz.port}"
    health.updated()
    for what, n, code, eligible in NODE_SEQUENCE:
        health.node(n)
        got, _, text = fetch(f"{base}/healthz")
        body = json.loads(text)
        assert (got, body["nodeEligible"], body["healthy"]) == (code, eligible, True), what
        got, _, text = fetch(f"{base}/livez")
        assert got == 200 and "nodeEligible" not in json.loads(text), what


def test_a_node_never_seen_is_eligible():
    """Before the first snapshot names this node (start-up, a run without Nodes) the node is
    eligible; kube-proxy waits for its Node before it serves at all."""
    health = Health()
    health.updated()
    health.node(None)
    code, body = health.status()
    assert code == 200 and body["nodeEligible"] is True


def test_health_check_node_port_sends_the_endpoint_weight_header():
    """kube-proxy (1.28+) answers X-Load-Balancing-Endpoint-Weight: the local endpoints, for
    load balancers that weigh nodes by it (GCE's WEIGHTED_MAGLEV); 0 with the 503."""
    hc = HealthCheckNodePorts("127.0.0.1")
    port = free_port()
    try:
        for count, code in ((3, 200), (0, 503)):
            hc.sync([HealthCheck("default/web", port, count)])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as r:
                    got, headers = r.status, r.headers
            except urllib.error.HTTPError as e:
                got, headers = e.code, e.headers
            assert got == code
            assert headers["X-Load-Balancing-Endpoint-Weight"] == str(count)
            assert headers["X-Content-Type-Options"] == "nosniff"
    finally:
        hc.close()


def test_health_check_node_ports_follow_the_desired_state():
    hc = HealthCheckNodePorts("127.0.0.1")
    port = free_port()
    try:
        assert hc.sync([HealthCheck("default/web", port, 2)]) == []
        code, _, text = fetch(f"http://127.0.0.1:{port}/")
        assert code == 200 and json.loads(text) == {
            "service": {"namespace": "default", "name": "web"},
            "localEndpoints": 2,
            "serviceProxyHealthy": True,
        }
        hc.sync([HealthCheck("default/web", port, 0)])
        code, _, text = fetch(f"http://127.0.0.1:{port}/")
        assert code == 503 and json.loads(text)["localEndpoints"] == 0
        hc.sync([])
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
    finally:
        hc.close()


def test_a_taken_health_check_port_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        hc = HealthCheckNodePorts("127.0.0.1")
        (problem,) = hc.sync([HealthCheck("default/web", port, 1)])
        assert f"healthCheckNodePort {port} of Service default/web" in problem
        assert hc.sync([HealthCheck("default/web", port, 1)]) == []  # said once
        hc.close()


def _flood(port: int, count: int, source: str) -> list[socket.socket]:
    """count idle TCP connections to 127.0.0.1:port from source, as a hostile pod would."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def test_ten_thousand_idle_connections_do_not_starve_others():
    """A pod that opens 10,000 idle connections to :10256 and to a healthCheckNodePort holds
    at most a handful of workers; everyone else is still answered at once, and its
    connections are closed within the idle timeout."""
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 30000)), hard))
    health = Health()
    health.updated()
    endpoints = Endpoints(health, Metrics(), "127.0.0.1", 0, -1)
    hc_port = free_port()
    hc = HealthCheckNodePorts("127.0.0.1")
    hc.sync([HealthCheck("default/web", hc_port, 1)])
    flood: list[socket.socket] = []
    try:
        for port in (endpoints.healthz.port, hc_port):
            flood += _flood(port, 5000, "127.0.0.2")
        time.sleep(1.0)
        start = time.monotonic()
        for _ in range(20):  # the kubelet's probes, from another address
            assert fetch(f"http://127.0.0.1:{endpoints.healthz.port}/healthz")[0] == 200
            assert fetch(f"http://127.0.0.1:{hc_port}/")[0] == 200
        took = time.monotonic() - start
        print(f"40 requests beside 10,000 idle connections: {took:.2f} s")
        assert took < 10  # generous: each answered at once, not after an idle timeout

        def refused() -> int:
            return endpoints.healthz.refused + hc.servers[hc_port].refused

        # all but PER_SOURCE a server were closed as soon as they were accepted
        assert eventually(lambda: refused() > 9000, 20), refused()
        print(f"{refused()} of the 10,000 closed at once")
    finally:
        for s in flood:
            s.close()
        endpoints.close()
        hc.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_failing_handler_answers_500_without_its_text():
    class Broken(Health):
        def status(self):
            raise RuntimeError("secret path /etc/xlb/gossip/key")

    endpoints = Endpoints(Broken(), Metrics(), "127.0.0.1", 0, -1)
    try:
        code, _, body = fetch(f"http://127.0.0.1:{endpoints.healthz.port}/healthz")
        assert code == 500 and "secret" not in body and "internal error" in body
    finally:
        endpoints.close()


@pytest.mark.parametrize("address", ["::1", "::"])
def test_an_ipv6_bind_address_serves_health(address):
    """An IPv6-only node's --bind-address is an IPv6 address: the servers bind it (they
    raised `Address family for hostname not supported`, and the agent never started)."""
    health = Health()
    health.updated()
    eps = Endpoints(health, Metrics(None), address, 0, -1)
    try:
        code, _, text = fetch(f"http://[::1]:{eps.healthz.port}/healthz")
        assert code == 200 and json.loads(text)["nodeEligible"] is True
    finally:
        eps.close()


# kube-proxy's TestServer (pkg/proxy/healthcheck/healthcheck_test.go), ported as data: its
# steps, as the combined (services, endpoints) state xlb's sync carries at once (kube-proxy
# calls SyncServices and SyncEndpoints apart), and what each service's server answers
# after it: (status, localEndpoints, serviceProxyHealthy). Ports are kube-proxy's, shifted
# into a free range of this machine.
HC_STEPS = [
    ("a real service, no endpoints", {"a/b": 9376}, {}, True, {"a/b": (503, 0)}),
    ("an endpoint", {"a/b": 9376}, {"a/b": 18}, True, {"a/b": (200, 18)}),
    ("zero endpoints", {"a/b": 9376}, {"a/b": 0}, True, {"a/b": (503, 0)}),
    ("the endpoint back", {"a/b": 9376}, {"a/b": 11}, True, {"a/b": (200, 11)}),
    ("nil endpoints", {"a/b": 9376}, {}, True, {"a/b": (503, 0)}),
    ("multiple services", {"a/b": 9376, "c/d": 12909, "e/f": 11113}, {}, True,
     {"a/b": (503, 0), "c/d": (503, 0), "e/f": (503, 0)}),
    ("their endpoints", {"a/b": 9376, "c/d": 12909, "e/f": 11113},
     {"a/b": 9, "c/d": 3, "e/f": 7}, True, {"a/b": (200, 9), "c/d": (200, 3), "e/f": (200, 7)}),
    ("one removed, one left, one moved, one added", {"c/d": 12909, "e/f": 11114, "g/h": 11878},
     {"c/d": 3}, True, {"c/d": (200, 3), "e/f": (503, 0), "g/h": (503, 0)}),
    ("endpoints for all", {"c/d": 12909, "e/f": 11114, "g/h": 11878},
     {"a/b": 9, "c/d": 3, "e/f": 7, "g/h": 6}, True,
     {"c/d": (200, 3), "e/f": (200, 7), "g/h": (200, 6)}),
    ("endpoints, missing c/d", {"c/d": 12909, "e/f": 11114, "g/h": 11878},
     {"e/f": 7, "g/h": 6}, True, {"c/d": (503, 0), "e/f": (200, 7), "g/h": (200, 6)}),
    ("a temporarily unhealthy proxy", {"c/d": 12909, "e/f": 11114, "g/h": 11878},
     {"e/f": 7, "g/h": 6}, False, {"c/d": (503, 0), "e/f": (503, 7), "g/h": (503, 6)}),
    ("healthy again", {"c/d": 12909, "e/f": 11114, "g/h": 11878},
     {"e/f": 7, "g/h": 6}, True, {"c/d": (503, 0), "e/f": (200, 7), "g/h": (200, 6)}),
]  # fmt: skip


def test_kube_proxys_health_check_server_table():
    healthy = [True]
    hc = HealthCheckNodePorts("127.0.0.1", proxy_healthy=lambda: healthy[0])
    shift = free_port() - 9000  # kube-proxy's ports, moved where nothing listens
    try:
        for name, services, endpoints, proxy_ok, expected in HC_STEPS:
            healthy[0] = proxy_ok
            checks = [HealthCheck(s, p + shift, endpoints.get(s, 0)) for s, p in services.items()]
            assert hc.sync(checks) == [], name
            assert sorted(hc.servers) == sorted(p + shift for p in services.values()), name
            for svc, (status, count) in expected.items():
                code, headers, text = fetch_with_headers(
                    f"http://127.0.0.1:{services[svc] + shift}/healthz"
                )
                ns, svc_name = svc.split("/")
                assert (code, json.loads(text)) == (status, {
                    "service": {"namespace": ns, "name": svc_name},
                    "localEndpoints": count,
                    "serviceProxyHealthy": proxy_ok,
                }), (name, svc)  # fmt: skip
                assert headers["Content-Type"] == "application/json", name
                assert headers["X-Content-Type-Options"] == "nosniff", name
                assert headers["X-Load-Balancing-Endpoint-Weight"] == str(count), name
    finally:
        hc.close()


def fetch_with_headers(url: str):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()
