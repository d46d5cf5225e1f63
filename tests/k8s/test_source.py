"""The Kubernetes source, driven through the real `kubernetes` client against a local server
that speaks the list/watch protocol."""

from __future__ import annotations

import contextlib

import pytest
from kubernetes import client

from controlplane.sources.kubernetes import KubernetesSource
from tests.helpers import wait_until
from tests.k8s.apiserver import ApiServer


def svc(name, ip, port=80, labels=None):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"clusterIP": ip, "ports": [{"port": port}], "selector": {"app": name}},
    }


def eps(service, ips, labels=None):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service, **(labels or {})},
        },
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [ip], "nodeName": "node-1"} for ip in ips],
    }


NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "node-1"},
    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.198.201"}]},
}


@pytest.fixture
def api():
    server = ApiServer()
    server.apply(NODE)
    yield server
    server.close()


@contextlib.contextmanager
def running_source(api):
    """A started source on the stand-in, stopped however the block ends."""
    cfg = client.Configuration()
    cfg.host = api.url
    src = KubernetesSource(client.ApiClient(cfg), watch_timeout=5, backoff=(0.05, 0.5))
    src.start()
    try:
        yield src
    finally:
        src.stop()


@pytest.fixture
def source(api):
    with running_source(api) as src:
        yield src


def services(src):
    return {s.name: s for s in src.snapshot().services}


def backends(src, name):
    return sorted(
        e.addresses[0]
        for sl in src.snapshot().slices
        if sl.service_name == name
        for e in sl.endpoints
    )


def test_initial_sync_waits_for_every_resource_and_filters_at_the_api(api):
    api.apply(svc("web", "10.96.0.10"))
    api.apply(
        svc("other", "10.96.0.11", {"service.kubernetes.io/service-proxy-name": "someone-else"})
    )
    api.apply(eps("web", ["10.244.1.5"]))
    api.apply(eps("dns", ["10.244.1.9"], {"service.kubernetes.io/headless": ""}))
    cfg = client.Configuration()
    cfg.host = api.url
    src = KubernetesSource(client.ApiClient(cfg), watch_timeout=5)
    assert not src.changed()  # nothing before the lists are in
    src.start()
    try:
        wait_until(lambda: src.ready)
        assert src.changed()
        assert set(services(src)) == {"web"}
        assert backends(src, "web") == ["10.244.1.5"] and backends(src, "dns") == []
        assert [n.name for n in src.snapshot().nodes] == ["node-1"]
        assert not src.changed()
    finally:
        src.stop()


def test_adds_changes_and_deletes_arrive(api, source):
    wait_until(lambda: source.ready)
    api.apply(svc("web", "10.96.0.10"))
    api.apply(eps("web", ["10.244.1.5"]))
    wait_until(lambda: backends(source, "web") == ["10.244.1.5"])
    api.apply(eps("web", ["10.244.1.5", "10.244.2.5"]))
    wait_until(lambda: backends(source, "web") == ["10.244.1.5", "10.244.2.5"])
    api.apply(svc("web", "10.96.0.10", port=81))
    wait_until(lambda: services(source)["web"].ports[0].port == 81)
    api.delete("Service", "web")
    wait_until(lambda: "web" not in services(source))


@pytest.mark.parametrize(
    "label",
    [
        {"service.kubernetes.io/headless": ""},
        {"service.kubernetes.io/service-proxy-name": "someone-else"},
    ],  # fmt: skip
    ids=["headless", "proxy-name"],
)
def test_a_label_put_on_a_live_service_removes_it_and_taking_it_off_brings_it_back(
    api, source, label
):
    """The watch is label-selected, so the API server turns the change into DELETED (and,
    label off, into ADDED): the Service is no longer this proxy's, then is again."""
    wait_until(lambda: source.ready)
    api.apply(svc("web", "10.96.0.10"))
    wait_until(lambda: "web" in services(source))
    api.apply(svc("web", "10.96.0.10", labels=label))
    wait_until(lambda: "web" not in services(source))
    api.apply(svc("web", "10.96.0.10", port=81))
    wait_until(lambda: "web" in services(source) and services(source)["web"].ports[0].port == 81)


def test_gone_relists_without_losing_updates(api, source):
    wait_until(lambda: source.ready)
    api.apply(svc("a", "10.96.0.20"))
    api.apply(svc("b", "10.96.0.21"))
    wait_until(lambda: {"a", "b"} <= set(services(source)))
    lists = next(r for r in source.reflectors if r.kind == "Service").lists
    api.down = True  # the watch breaks; meanwhile the history is compacted away
    api.cut_watches()
    api.apply(svc("c", "10.96.0.22"))
    api.delete("Service", "a")
    api.compact()
    api.down = False
    wait_until(lambda: set(services(source)) == {"b", "c"})
    assert next(r for r in source.reflectors if r.kind == "Service").lists > lists


def test_cut_watches_resume_from_their_version_without_listing_again(api, source):
    wait_until(lambda: source.ready)
    reflector = next(r for r in source.reflectors if r.kind == "Service")
    lists = reflector.lists
    for i in range(5):
        api.cut_watches()
        api.apply(svc(f"s{i}", f"10.96.1.{i}"))
        wait_until(lambda i=i: f"s{i}" in services(source))
    assert reflector.lists == lists


def test_server_errors_back_off_and_recover(api, source):
    wait_until(lambda: source.ready)
    api.fail_next = 4
    api.cut_watches()
    api.apply(svc("late", "10.96.0.30"))
    wait_until(lambda: "late" in services(source))


def test_an_outage_keeps_the_last_state_and_says_so(api, source):
    wait_until(lambda: source.ready)
    api.apply(svc("web", "10.96.0.10"))
    api.apply(eps("web", ["10.244.1.5"]))
    # both: the two arrive on separate watches, in either order
    wait_until(lambda: backends(source, "web") == ["10.244.1.5"] and "web" in services(source))
    source.snapshot()
    api.down = True
    api.cut_watches()
    wait_until(lambda: source.health()["errors"])
    # every reflector tried again, and again, against the server that is down
    refused = api.refused
    wait_until(lambda: api.refused >= refused + 2 * len(source.reflectors))
    assert not source.changed()  # nothing was flushed
    assert backends(source, "web") == ["10.244.1.5"]
    api.down = False
    api.apply(eps("web", ["10.244.1.6"]))
    wait_until(lambda: backends(source, "web") == ["10.244.1.6"])
    wait_until(lambda: not source.health()["errors"])


POOL = {
    "apiVersion": "metallb.io/v1beta1",
    "kind": "IPAddressPool",
    "metadata": {"name": "lan", "namespace": "metallb-system", "labels": {"zone": "a"}},
    "spec": {"addresses": ["192.168.198.240/28", "fd00:198::240-fd00:198::24f"]},
}
ADVERT = {
    "apiVersion": "metallb.io/v1beta1",
    "kind": "L2Advertisement",
    "metadata": {"name": "on-eth1", "namespace": "metallb-system"},
    "spec": {"ipAddressPools": ["lan"], "interfaces": ["eth1"]},
}


def test_metallb_pools_and_advertisements_are_read_as_they_are(api, source):
    api.apply(POOL)
    api.apply(ADVERT)
    bad = {**POOL, "metadata": {"name": "typo", "namespace": "metallb-system"}}
    bad["spec"] = {"addresses": ["192.168.198.300/28"]}
    api.apply(bad)
    wait_until(lambda: source.snapshot().advertisements)
    wait_until(lambda: len(source.snapshot().diagnostics) == 1)
    cluster = source.snapshot()
    ((pool,),) = [[p for p in cluster.pools if p.name == "lan"]]
    assert pool.contains("192.168.198.250") and pool.contains("fd00:198::24f")
    assert dict(pool.labels) == {"zone": "a"}
    (ad,) = cluster.advertisements
    assert (ad.pools, ad.interfaces) == (("lan",), ("eth1",))
    (diag,) = cluster.diagnostics
    assert (diag.kind, diag.name, diag.field) == ("IPAddressPool", "typo", "spec.addresses[0]")


def test_without_metallb_crds_the_source_is_ready_and_finds_them_later(api):
    api.crds = False
    with running_source(api) as src:
        wait_until(lambda: src.ready)
        assert not src.health()["errors"]
        cluster = src.snapshot()
        assert cluster.pools == [] and cluster.advertisements is None
        api.crds = True  # MetalLB's CRDs installed later: found on the next look
        api.apply(POOL)
        wait_until(lambda: [p.name for p in src.snapshot().pools] == ["lan"])


def service_cidr(name, *cidrs):
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": list(cidrs)},
    }


def test_service_cidrs_are_read_and_a_malformed_entry_is_one_diagnostic(api, source):
    """The default ServiceCIDR kube-apiserver makes, one added later (a malformed entry of it
    gets one diagnostic and its good entry still counts), and its deletion."""
    wait_until(lambda: source.snapshot().service_cidrs == ["10.96.0.0/12"])
    api.apply(service_cidr("extra", "10.100.0.0/16", "fd00:10:96::/112x"))
    wait_until(lambda: sorted(source.snapshot().service_cidrs) == ["10.100.0.0/16", "10.96.0.0/12"])
    (diag,) = [d for d in source.snapshot().diagnostics if d.kind == "ServiceCIDR"]
    assert (diag.name, diag.field) == ("extra", "spec.cidrs[1]")
    assert "not a CIDR" in diag.message
    api.delete("ServiceCIDR", "extra")
    wait_until(lambda: source.snapshot().service_cidrs == ["10.96.0.0/12"])


def test_a_server_without_service_cidrs_is_ready_and_has_none(api):
    """An API server before ServiceCIDRs (404 for the resource) is no error: none known, so
    no address is dropped for being unallocated."""
    api.service_cidr_api = False
    with running_source(api) as src:
        wait_until(lambda: src.ready)
        assert not src.health()["errors"] and src.snapshot().service_cidrs == []


def test_lists_come_in_pages_and_an_expired_page_token_lists_anew(api):
    """1,200 Services arrive in pages of 500, as informers ask for them; when the history is
    compacted between two pages (the token is then 410 Gone, as kube-apiserver answers),
    the list starts again and still holds everything."""
    for i in range(1200):
        api.apply(svc(f"s{i}", f"10.97.{i // 250}.{i % 250 + 1}"))
    api.compact_at_page = 2  # the second page served: the token it carries is stale
    with running_source(api) as src:
        wait_until(lambda: src.ready, timeout=15)
        assert len(services(src)) == 1200
        print(f"{api.pages} pages served")
        assert api.pages >= 3 + 3  # the Services twice (the second time whole) ...
