"""The announcing node for each LoadBalancer IP."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

from controlplane.l2.election import owner, owners
from controlplane.model.objects import Node
from controlplane.model.pools import Advertisement, Pool
from tests.helpers import ep, service, slice_

NODES = [Node(f"node-{i}", labels={"rack": "a" if i < 3 else "b"}) for i in range(1, 5)]
LIVE = {n.name for n in NODES}


def lb(name, ip, **spec):
    return service(
        name, type="LoadBalancer", status={"loadBalancer": {"ingress": [{"ip": ip}]}}, **spec
    )


def test_same_answer_everywhere_and_spread_over_nodes():
    ips = [f"192.168.198.{i}" for i in range(1, 201)]
    first = {ip: owner(ip, LIVE) for ip in ips}
    assert first == {ip: owner(ip, sorted(LIVE, reverse=True)) for ip in ips}
    assert min(Counter(first.values()).values()) > 25  # 200 IPs over 4 nodes, roughly even


def test_a_dead_node_moves_only_its_own_ips():
    ips = [f"192.168.198.{i}" for i in range(1, 201)]
    before = {ip: owner(ip, LIVE) for ip in ips}
    after = {ip: owner(ip, LIVE - {"node-2"}) for ip in ips}
    moved = {ip for ip in ips if before[ip] != after[ip]}
    assert moved == {ip for ip in ips if before[ip] == "node-2"}


def test_local_policy_only_nodes_with_a_ready_local_endpoint_and_selectors():
    svc = lb("web", "192.168.198.240", externalTrafficPolicy="Local")
    eps = slice_("web", [ep("10.244.3.5", "node-3"), ep("10.244.4.5", "node-4", ready=False)])
    assert owners([svc], [eps], NODES, LIVE) == {"192.168.198.240": "node-3"}
    assert owners([svc], [eps], NODES, LIVE - {"node-3"}) == {}  # nobody can serve it
    cluster_svc = lb("any", "192.168.198.241", clusterIP="10.96.0.11")
    rack_b = Advertisement("b", node_selectors=((("rack", "b"),),))
    got = owners([cluster_svc], [], NODES, LIVE, [rack_b])
    assert got == {"192.168.198.241": owner("192.168.198.241", {"node-3", "node-4"})}


POOLS = [
    Pool("lan", ((4, int(IPv4Address("192.168.198.240")), int(IPv4Address("192.168.198.247"))),)),
    Pool(
        "dmz",
        ((4, int(IPv4Address("192.168.198.248")), int(IPv4Address("192.168.198.255"))),),
        labels=(("zone", "dmz"),),
    ),
]


def test_advertisements_choose_pools_nodes_and_interfaces():
    lan, dmz = lb("a", "192.168.198.240"), lb("b", "192.168.198.250")
    # no advertisement at all: xlb's default, every pool from every node
    assert set(owners([lan, dmz], [], NODES, LIVE, None, POOLS)) == {
        "192.168.198.240",
        "192.168.198.250",
    }
    # once one exists, MetalLB's rule: only covered pools are announced
    only_lan = [Advertisement("l", pools=("lan",))]
    assert set(owners([lan, dmz], [], NODES, LIVE, only_lan, POOLS)) == {"192.168.198.240"}
    by_label = [Advertisement("d", pool_selectors=((("zone", "dmz"),),))]
    assert set(owners([lan, dmz], [], NODES, LIVE, by_label, POOLS)) == {"192.168.198.250"}
    # interfaces: node-1 and node-2 announce on eth1, the others' uplink is eth0
    uplinks = {"node-1": "eth1", "node-2": "eth1", "node-3": "eth0", "node-4": "eth0"}
    eth0 = [Advertisement("e", interfaces=("eth0",))]
    got = owners([lan, dmz], [], NODES, LIVE, eth0, POOLS, uplinks)
    assert set(got.values()) <= {"node-3", "node-4"} and len(got) == 2
    # an uplink not heard of yet counts as matching, so the election never stalls on it
    got = owners([lan], [], NODES, {"node-1"}, eth0, POOLS, {})
    assert got == {"192.168.198.240": "node-1"}
    # two advertisements: the union of what each admits
    two = [
        Advertisement("e", interfaces=("eth0",)),
        Advertisement("r", node_selectors=((("rack", "a"),),)),
    ]
    got = owners([lan], [], NODES, LIVE - {"node-3", "node-4"}, two, POOLS, uplinks)
    assert got == {"192.168.198.240": owner("192.168.198.240", {"node-1", "node-2"})}


HOSTILE = [
    # (description, the Service, announced by some node)
    ("ours: in a pool, no class", lb("ours", "192.168.198.241"), True),
    ("the LAN's gateway, written into a status", lb("gw", "192.168.198.1"), False),
    ("an address outside every pool", lb("far", "10.1.2.3"), False),
    (
        "another controller's class, in our pool's range",
        lb("theirs", "192.168.198.242", loadBalancerClass="example.com/other"),
        False,
    ),
    (
        "a class xlb serves (--lb-class)",
        lb("served", "192.168.198.243", loadBalancerClass="example.com/lab"),
        True,
    ),
]


def test_the_lan_hears_answers_only_for_xlbs_addresses():
    """Anyone who can write a Service's status could make the nodes answer ARP for any
    address (the gateway's): only addresses of xlb's pools, of the classes it serves, are."""
    services = [svc for _, svc, _ in HOSTILE]
    got = owners(services, [], NODES, LIVE, None, POOLS, lb_class="example.com/lab")
    for description, svc, announced in HOSTILE:
        assert (svc.ingress_ips[0] in got) is announced, description


def test_local_policy_counts_serving_terminating_endpoints_as_metallb_does():
    """A rolling update's last old pod on a node: terminating but still serving. kube-proxy
    still sends the NodePort's traffic to it, MetalLB still announces (EndpointCanServe:
    ready, or serving); before, the LB IP went dark until the new pod was ready."""
    svc = lb("web", "192.168.198.240", externalTrafficPolicy="Local")
    draining = slice_("web", [ep("10.244.3.5", "node-3", ready=False, serving=True,
                                 terminating=True)])  # fmt: skip
    assert owners([svc], [draining], NODES, LIVE) == {"192.168.198.240": "node-3"}
    gone = slice_("web", [ep("10.244.3.5", "node-3", ready=False, serving=False,
                             terminating=True)])  # fmt: skip
    assert owners([svc], [gone], NODES, LIVE) == {}


def test_nodes_excluded_from_load_balancers_never_announce():
    """MetalLB's node exclusions: the exclude-from-external-load-balancers label (any value)
    and a NetworkUnavailable condition that is True."""
    from controlplane.model.parse import parse_node

    def node(name, labels=None, unavailable=None):
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                                                               "labels": labels or {}}}  # fmt: skip
        if unavailable is not None:
            obj["status"] = {"conditions": [{"type": "NetworkUnavailable",
                                             "status": unavailable}]}  # fmt: skip
        return parse_node(obj)[0]

    nodes = [
        node("node-1", {"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
        node("node-2", unavailable="True"),
        node("node-3", unavailable="False"),
        node("node-4"),
    ]
    assert [n.excluded_from_load_balancers for n in nodes] == [True, True, False, False]
    ips = [f"192.168.198.{i}" for i in range(1, 41)]
    svcs = [lb(f"s{i}", ip, clusterIP=f"10.96.0.{i}") for i, ip in enumerate(ips, start=1)]
    got = owners(svcs, [], nodes, {n.name for n in nodes})
    assert set(got) == set(ips) and set(got.values()) == {"node-3", "node-4"}


def test_drained_turns_a_dead_nodes_ready_endpoints_terminating_and_serving():
    from controlplane.l2.election import drained

    sl = slice_("web", [ep("10.244.1.5", "node-1"), ep("10.244.2.5", "node-2"),
                        ep("10.244.2.6", "node-2", ready=False, serving=False)])  # fmt: skip
    assert drained([sl], set())[0] is sl and drained([sl], {"node-3"})[0] is sl
    (out,) = drained([sl], {"node-2"})
    got = {e.addresses[0]: (e.ready, e.serving, e.terminating) for e in out.endpoints}
    assert got == {
        "10.244.1.5": (True, True, False),
        "10.244.2.5": (False, True, True),  # drains: existing flows only, a last resort
        "10.244.2.6": (False, False, True),  # was not serving: still not
    }
