"""LoadBalancer IP allocation: pools as MetalLB defines them, requests, stability, families."""

from __future__ import annotations

import textwrap

import pytest

from controlplane.model import Level
from controlplane.model.pools import (
    allocate,
    config_pool,
    parse_advertisement,
    parse_pool,
    parse_range,
    status_changes,
)
from controlplane.sources.manifests import load_cluster
from tests.helpers import service


def pool(name="default", *addresses, auto=True, buggy=False):
    p, d = parse_pool(
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system"},
            "spec": {"addresses": list(addresses), "autoAssign": auto, "avoidBuggyIPs": buggy},
        }
    )
    assert p is not None, d
    return p


def lb(name, **spec):
    return service(name, type="LoadBalancer", **spec)


def test_ranges_cidrs_and_bad_input():
    assert parse_range("192.168.1.240/30") == (4, 3232236016, 3232236019)
    assert parse_range("10.0.0.1-10.0.0.3")[2] - parse_range("10.0.0.1-10.0.0.3")[1] == 2
    _, diags = parse_pool(
        {
            "kind": "IPAddressPool",
            "metadata": {"name": "x"},
            "spec": {"addresses": ["10.0.0.9-10.0.0.1", "nope"]},
        }
    )
    assert [d.field for d in diags] == ["spec.addresses[0]", "spec.addresses[1]"]


def test_lowest_free_address_in_name_order_and_no_double_allocation():
    pools = [pool("b", "10.0.1.0/30"), pool("a", "10.0.0.1-10.0.0.2")]
    got, diags = allocate(
        [
            lb("s1", clusterIP="10.96.0.1"),
            lb("s2", clusterIP="10.96.0.2"),
            lb("s3", clusterIP="10.96.0.3"),
        ],
        pools,
    )
    assert (
        got
        == {"default/s1": ("10.0.0.1",), "default/s2": ("10.0.0.2",), "default/s3": ("10.0.1.0",)}
        and diags == []
    )


def test_existing_assignments_are_kept_when_others_come_and_go():
    pools = [pool("a", "10.0.0.1-10.0.0.4")]
    s2 = lb("s2", clusterIP="10.96.0.2")
    got, _ = allocate([lb("s1", clusterIP="10.96.0.1"), s2], pools, {"default/s2": ("10.0.0.3",)})
    assert got["default/s2"] == ("10.0.0.3",) and got["default/s1"] == ("10.0.0.1",)
    got, _ = allocate([s2], pools, got)  # s1 deleted: its address is released
    assert got == {"default/s2": ("10.0.0.3",)}


def test_requested_addresses_annotation_and_field():
    pools = [pool("a", "10.0.0.0/29")]
    got, diags = allocate(
        [
            lb(
                "ann", clusterIP="10.96.0.1", annotations={"metallb.io/loadBalancerIPs": "10.0.0.5"}
            ),
            lb("field", clusterIP="10.96.0.2", loadBalancerIP="10.0.0.6"),
            lb("outside", clusterIP="10.96.0.3", loadBalancerIP="192.0.2.1"),
            lb("taken", clusterIP="10.96.0.4", loadBalancerIP="10.0.0.6"),
        ],
        pools,
    )
    assert got["default/ann"] == ("10.0.0.5",) and got["default/field"] == ("10.0.0.6",)
    errors = {d.name: d.message for d in diags if d.level is Level.ERROR}
    assert "in no address pool" in errors["outside"]
    assert "already assigned to Service default/field" in errors["taken"]


def test_pool_choice_auto_assign_and_buggy_ips():
    pools = [pool("manual", "10.0.9.0/31", auto=False), pool("auto", "10.0.0.0/24", buggy=True)]
    got, diags = allocate(
        [
            lb("any", clusterIP="10.96.0.1"),
            lb("picky", clusterIP="10.96.0.2", annotations={"metallb.io/address-pool": "manual"}),
            lb("lost", clusterIP="10.96.0.3", annotations={"metallb.io/address-pool": "nope"}),
        ],
        pools,
    )
    assert got["default/any"] == ("10.0.0.1",)  # .0 skipped, manual pool not used
    assert got["default/picky"] == ("10.0.9.0",)
    assert "no address pool named 'nope'" in next(d.message for d in diags if d.name == "lost")


def test_dual_stack_gets_one_address_per_family_and_exhaustion_warns():
    pools = [pool("a", "10.0.0.1-10.0.0.1", "fd00::10-fd00::11")]
    ds = lb(
        "ds",
        clusterIP="10.96.0.1",
        clusterIPs=["10.96.0.1", "fd00:10:96::1"],
        ipFamilyPolicy="RequireDualStack",
    )
    got, diags = allocate([ds, lb("late", clusterIP="10.96.0.2")], pools)
    assert got["default/ds"] == ("10.0.0.1", "fd00::10")
    (warn,) = diags
    assert warn.name == "late" and "no free IPv4 address in a" in warn.message


def test_no_pool_no_request_is_pending_info():
    got, diags = allocate([lb("s", clusterIP="10.96.0.1")], [])
    assert got == {} and diags[0].level is Level.INFO and "IPAddressPool" in diags[0].message


@pytest.mark.parametrize("pools,expect", [("", "1.2.3.4"), ("with", None)])
def test_manifests_with_metallb_pools(tmp_path, pools, expect):
    text = textwrap.dedent("""
        apiVersion: v1
        kind: Service
        metadata: {name: requested}
        spec: {type: LoadBalancer, loadBalancerIP: 1.2.3.4, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: auto}
        spec: {type: LoadBalancer, ports: [{port: 80}]}
    """)
    if pools:
        text += textwrap.dedent("""
            ---
            apiVersion: metallb.io/v1beta1
            kind: IPAddressPool
            metadata: {name: lan, namespace: metallb-system}
            spec: {addresses: [192.168.198.240/28]}
            ---
            apiVersion: metallb.io/v1beta1
            kind: L2Advertisement
            metadata: {name: lan, namespace: metallb-system}
        """)
    (tmp_path / "m.yaml").write_text(text)
    cluster = load_cluster([tmp_path])
    got = {s.name: s.ingress_ips for s in cluster.services}
    if expect:  # no pool: a request is honoured as is, the rest waits
        assert got == {"requested": (expect,), "auto": ()}
    else:
        assert got == {"requested": (), "auto": ("192.168.198.240",)}
        assert any("1.2.3.4 is in no address pool" in d.message for d in cluster.diagnostics)


def test_pools_from_xlbs_config():
    p = config_pool("lan=192.168.1.240/30, fd00::1-fd00::2")
    assert p.name == "lan" and p.contains("192.168.1.243") and p.contains("fd00::2")
    assert p.auto_assign and not p.contains("192.168.1.244")
    for bad in ("lan", "=10.0.0.0/24", "lan="):
        with pytest.raises(ValueError, match="NAME=RANGE"):
            config_pool(bad)


def test_advertisements_as_metallb_writes_them():
    ad, diags = parse_advertisement(
        {
            "kind": "L2Advertisement",
            "metadata": {"name": "l2", "namespace": "metallb-system"},
            "spec": {
                "ipAddressPools": ["lan"],
                "ipAddressPoolSelectors": [{"matchLabels": {"zone": "dmz"}}],
                "nodeSelectors": [{"matchLabels": {"rack": "a"}}],
                "interfaces": ["eth1"],
            },
        }
    )
    assert diags == [] and ad is not None
    assert ad.covers(pool("lan", "10.0.0.0/30")) and not ad.covers(pool("x", "10.0.0.0/30"))
    assert ad.admits({"rack": "a", "other": "1"}) and not ad.admits({"rack": "b"})
    every = parse_advertisement({"kind": "L2Advertisement", "metadata": {"name": "all"}})[0]
    assert every.covers(None) and every.covers(pool("x", "10.0.0.0/30")) and every.admits({})
    ad, diags = parse_advertisement(
        {
            "metadata": {"name": "expr"},
            "spec": {"nodeSelectors": [{"matchExpressions": [{"key": "a", "operator": "In"}]}]},
        }
    )
    assert ad is None
    assert [d.field for d in diags] == ["spec.nodeSelectors[0].matchExpressions"]


def test_status_changes_write_allocations_release_ours_and_touch_nothing_else():
    lan = pool("lan", "192.168.1.240/30")
    has = {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}
    services = [
        lb("new"),
        lb("same", status=has),
        service("was-lb", status=has),  # type changed away: ours, released
        service("cloud", status={"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
        lb("theirs", loadBalancerClass="example.com/cloud"),
    ]
    current = {s.key: s.ingress_ips for s in services if s.ingress_ips}
    assigned, _ = allocate(services, [lan], current)
    assert assigned["default/same"] == ("192.168.1.240",)
    assert "theirs" not in {k.split("/")[1] for k in assigned}
    changes = status_changes(services, assigned, [lan])
    assert changes == {"default/new": assigned["default/new"], "default/was-lb": ()}
    # a configured class is served too, beside the class-less ones
    assigned, _ = allocate(services, [lan], lb_class="example.com/cloud")
    assert "default/theirs" in assigned and "default/new" in assigned
