"""Cluster: one snapshot of what a source (the Kubernetes API, or manifest files) holds, the
one type every layer above the model reads; and Changes, what moved since the source's
previous snapshot, carried by key from the source to the translator (as kube-proxy's change
trackers carry them from the watch to the sync) instead of being found again by comparing
every Service."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .diagnostics import Diagnostic
from .objects import EndpointSlice, Node, Pod, Service

_lineages = itertools.count(1)


def new_lineage() -> int:
    """A number no other source in this process has: snapshots of two sources never chain."""
    return next(_lineages)


@dataclass(frozen=True)
class Changes:
    """The Services (namespace/name) whose object or EndpointSlices changed (added, edited,
    deleted) between two snapshots of one source: from its generation `since` to `until`.

    A consumer that last took generation `since` of this lineage may look at these Services
    alone; any other consumer, and every consumer of a snapshot whose changes are not known
    (`services` None, the default), must take the whole snapshot as new. Nodes, pools and
    ServiceCIDRs are not Services: their changes are the consumer's to compare (they are
    few and small)."""

    lineage: int = 0  # 0: no source tracks changes
    since: int = -1
    until: int = 0
    services: frozenset[str] | None = None

    def follows(self, lineage: int, generation: int) -> bool:
        """Whether these changes are all that happened after the snapshot (lineage,
        generation) a consumer took last."""
        return (
            self.services is not None
            and self.lineage != 0
            and self.lineage == lineage
            and self.since == generation
        )

    def widened(self, keys: Iterable[str]) -> Changes:
        """These changes, and the Services named by keys too: a consumer that alters a
        snapshot (the agent draining a dead node's endpoints) adds what it altered."""
        if self.services is None:
            return self
        return Changes(self.lineage, self.since, self.until, self.services | frozenset(keys))


EVERYTHING = Changes()


def slices_by_service(slices: Iterable[EndpointSlice]) -> dict[str, list[EndpointSlice]]:
    """Service (namespace/name) -> its slices, in their order."""
    out: dict[str, list[EndpointSlice]] = defaultdict(list)
    for sl in slices:
        out[sl.service_key].append(sl)
    return out


def changed_services(
    old_services: Iterable[Service],
    old_slices: Iterable[EndpointSlice],
    new_services: Iterable[Service],
    new_slices: Iterable[EndpointSlice],
) -> frozenset[str]:
    """The Services whose object or slices differ by value between two snapshots: for a
    source that reloads everything at once (manifest files) and so has no event per object.
    Slices are compared as a set per Service (their order in a file is not a change)."""
    old = {s.key: s for s in old_services}
    new = {s.key: s for s in new_services}
    before, after = slices_by_service(old_slices), slices_by_service(new_slices)
    out = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    for k in before.keys() | after.keys():
        a, b = before.get(k, []), after.get(k, [])
        if len(a) != len(b) or any(x not in b for x in a):
            out.add(k)
    return frozenset(out)


class ValueTracker:
    """Changes for a source that has no event per object, only whole lists (manifest files
    reloaded, a test, a benchmark): each call compares by value with the lists of the call
    before and numbers the snapshots of one lineage."""

    def __init__(self) -> None:
        self.lineage, self.generation = new_lineage(), 0
        self.last: tuple[list[Service], list[EndpointSlice]] | None = None

    def changes(self, services: Iterable[Service], slices: Iterable[EndpointSlice]) -> Changes:
        services, slices = list(services), list(slices)
        keys = None if self.last is None else changed_services(*self.last, services, slices)
        self.last = (services, slices)
        self.generation += 1
        return Changes(self.lineage, self.generation - 1, self.generation, keys)


@dataclass
class Cluster:
    services: list[Service] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    pools: list = field(default_factory=list)  # LoadBalancer address pools (model/pools.Pool)
    # L2Advertisements (model/pools.Advertisement); None: there are none, every pool is
    # announced
    advertisements: list | None = None
    # the ranges ClusterIPs are allocated from (ServiceCIDR objects, or the manifest
    # source's configuration): an address there that no Service holds goes nowhere
    service_cidrs: list[str] = field(default_factory=list)
    # what changed since the source's previous snapshot (default: not known, everything)
    changes: Changes = EVERYTHING
