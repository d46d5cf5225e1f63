"""What a lab is, as saved between `xlb lab` commands (one JSON file under /run/xlb): its
nodes, pods and external host, and the Services as its API server holds them; and its
address plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..sources.simulated import ClusterConfig


@dataclass
class NodeState:
    name: str
    netns: str
    addresses: list[str]
    pod_cidrs: list[str]
    zone: str
    cgroup: str
    pin_root: str
    agent_pid: int = 0


@dataclass
class PodState:
    name: str
    namespace: str
    node: str
    ips: list[str]
    labels: dict[str, str]
    ports: list[list]  # [name, port, protocol]
    netns: str
    host_veth: str
    pid: int = 0
    owner: str = ""
    # as the manifest's Pod says (status.conditions Ready, metadata.deletionTimestamp): the
    # process serves either way, as a pod failing its probe or shutting down still may
    ready: bool = True
    terminating: bool = False
    terminal: bool = False  # phase Succeeded or Failed: in no EndpointSlice


@dataclass
class LabState:
    name: str
    manifests: list[str]
    nodes: list[NodeState] = field(default_factory=list)
    pods: list[PodState] = field(default_factory=list)
    ext_ips: list[str] = field(default_factory=list)
    ext_ports: list[list] = field(default_factory=list)
    ext_pid: int = 0
    families: list[str] = field(default_factory=lambda: ["IPv4", "IPv6"])
    agent_args: list[str] = field(default_factory=list)  # more flags for every agent
    # the Services as the lab's API server holds them (admission.py): stamps, allocations
    services: dict[str, dict] = field(default_factory=dict)


FAMILIES = ("IPv4", "IPv6")


def lab_cluster_config(nodes: int, families: list[str]) -> ClusterConfig:
    """The lab's address plan, cut to the families it runs (an IPv6-only lab has no IPv4
    anywhere: nodes, pods, Services, client)."""
    base = ClusterConfig(nodes=nodes)

    def keep(cidrs: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(c for c in cidrs if ("IPv6" if ":" in c else "IPv4") in families)

    return dataclasses.replace(
        base,
        node_lan=keep(base.node_lan),
        pod_cidrs=keep(base.pod_cidrs),
        service_cidrs=keep(base.service_cidrs),
    )
