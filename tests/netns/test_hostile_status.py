"""Anyone who can write a Service's status: the real agent (Kubernetes source, against the API
stand-in bound in the node's namespace, with a gossip key) answers ARP on the LAN for its own
pool's address, and stays silent for a status that names the LAN's gateway, an address
outside every pool, or another controller's class."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import eventually
from tests.k8s.apiserver import ApiServer
from tests.kernel import inside
from tests.netns.nodes import AgentProcess, Lan, NodeTopology, node_topology

NODE_IP, CLIENT_IP, POD_IP = "192.168.198.201", "192.168.198.100", "10.244.1.5"
POOL, OURS = "lab=192.168.198.240/29", "192.168.198.240"
GATEWAY, OUTSIDE, FOREIGN = "192.168.198.1", "192.168.198.77", "192.168.198.245"
KEY = "c2VjcmV0LWtleS1vZi10aGUtbGFi\n"


def _lb(name: str, ip: str, cluster_ip: str, lb_class: str = "") -> dict:
    spec = {
        "type": "LoadBalancer",
        "clusterIP": cluster_ip,
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30000 + int(cluster_ip[-2:])}],
    }
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    status = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}} if ip else {}
    meta = {"name": name, "namespace": "default"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec, "status": status}


def _slice(name: str) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-a",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },  # fmt: skip
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [POD_IP], "nodeName": "node-1"}],
    }


@pytest.fixture
def node(tmp_path):
    with node_topology(tmp_path, [Lan(NODE_IP, CLIENT_IP)], {"web-1": POD_IP}) as topo:
        with inside(topo.node):
            api = ApiServer()
        try:
            yield topo, api
        finally:
            api.close()


def _arp_answers(topo: NodeTopology, ip: str) -> list[str]:
    out = topo.run_in(topo.client, "arping", "-c", "2", "-w", "3", "-I", "c0", ip)
    return re.findall(r"bytes from ([0-9a-f:]{17})", out.stdout)


def test_the_lan_hears_the_node_only_for_xlbs_addresses(node, tmp_path):
    topo, api = node
    address = {"type": "InternalIP", "address": NODE_IP}
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
               "status": {"addresses": [address]}})  # fmt: skip
    for name, ip, cip, cls in (
        ("ours", OURS, "10.96.0.40", ""),  # as an allocator wrote it: the pool's address
        ("gateway", GATEWAY, "10.96.0.41", ""),  # a status naming the LAN's gateway
        ("outside", OUTSIDE, "10.96.0.42", ""),  # in no pool
        ("theirs", FOREIGN, "10.96.0.43", "example.com/other"),  # another controller's
    ):
        api.apply(_lb(name, ip, cip, cls))
        api.apply(_slice(name))
    kubeconfig = tmp_path / "kubeconfig"
    api.write_kubeconfig(kubeconfig)
    (tmp_path / "key").write_text(KEY)
    args = ["--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--node", "node-1",
            "--uplink", "up0", "--cgroup", topo.cgroup, "--pin-root", topo.pin_root,
            "--pool", POOL, "--gossip-key-file", str(tmp_path / "key"),
            # statuses stay as the writers left them (xlb's allocator would replace a
            # class-less Service's out-of-pool address with one of its pool's)
            "--no-lb-allocator"]  # fmt: skip
    with AgentProcess(topo, args) as agent:
        agent.wait_ready()
        try:
            assert eventually(lambda: _arp_answers(topo, OURS), 15), "no answer for our own IP"
            for ip in (GATEWAY, OUTSIDE, FOREIGN):
                assert _arp_answers(topo, ip) == [], f"the node answered ARP for {ip}"
            shown = topo.xlb("status", "--json", "--pin-root", topo.pin_root).stdout
            assert json.loads(shown)["announcing"]["addresses"] == [OURS]
        except AssertionError:
            print(agent.text()[-4000:])
            raise
    topo.down()
