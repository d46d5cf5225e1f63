"""The sync against the real pinned maps: smallest writes, safe order, restart read-back."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.datapath.maps import (
    ALG_NUM,
    BE_F_LOCAL,
    BE_F_NOT_SERVING,
    BE_F_TERMINATING,
    SVC_F_PRESERVE_CLIENT,
    SVC_F_SOURCE_RANGES,
    Maps,
)
from controlplane.datapath.sync import Syncer
from controlplane.maglev import build_table, table_size
from controlplane.model.state import Algorithm, DesiredState, Scope
from tests.bpf.test_xdp_lb import NODE4, NODE6, frontend, local

WEB = [local(f"10.244.1.{i}", 8080) for i in range(1, 4)]


def web(backends=WEB, **kw) -> DesiredState:
    return DesiredState(
        frontends=(
            frontend(NODE4, 30080, "TCP", backends, service="default/web", **kw),
            frontend("192.168.198.240", 80, "TCP", backends, service="default/web", **kw),
        )
    )


class Recorder:
    """Wraps a bcc table and records every write in order."""

    def __init__(self, name, table, log):
        self._name, self._table, self._log = name, table, log

    def __setitem__(self, k, v):
        self._log.append((self._name, "set"))
        self._table[k] = v

    def __delitem__(self, k):
        self._log.append((self._name, "del"))
        del self._table[k]

    def items_update_batch(self, keys, values):
        self._log.append((self._name, "set"))
        self._table.items_update_batch(keys, values)

    def install(self, *args):  # the Maglev tables
        self._log.append((self._name, "set"))
        return self._table.install(*args)

    def rewrite(self, *args):
        self._log.append((self._name, "set"))
        return self._table.rewrite(*args)

    def remove(self, *args):
        self._log.append((self._name, "del"))
        return self._table.remove(*args)

    def __getattr__(self, attr):
        return getattr(self._table, attr)


@pytest.fixture
def recorded(maps):
    log = []
    for name in ("services", "slots", "backends", "maglev"):
        setattr(maps, name, Recorder(name, getattr(maps, name), log))
    yield maps, log
    for name in ("services", "slots", "backends", "maglev"):
        setattr(maps, name, getattr(maps, name)._table)


def test_second_identical_sync_writes_nothing(syncer):
    first = syncer.sync(web(), NODE4, NODE6)
    assert first.writes > 0
    again = syncer.sync(web(), NODE4, NODE6)
    assert (again.writes, again.deletes, again.tables) == (0, 0, 0)


def test_frontends_of_one_service_port_share_slots_and_table(syncer, maps):
    syncer.sync(web(), NODE4, NODE6)
    a = syncer.frontends[(NODE4, 30080, "TCP", Scope.EXTERNAL)]
    b = syncer.frontends[("192.168.198.240", 80, "TCP", Scope.EXTERNAL)]
    assert a.group == b.group and a.id != b.id
    assert set(maps.maglev.installed()) == {a.group}


def test_one_endpoint_added_writes_only_what_changed(syncer):
    syncer.sync(web(), NODE4, NODE6)
    res = syncer.sync(web(WEB + [local("10.244.1.9", 8080)]), NODE4, NODE6)
    # one backend, one slot, one new table swapped in, two service entries (count)
    assert (res.writes, res.deletes, res.tables) == (1 + 1 + 2, 0, 1)


def test_writes_come_in_an_order_that_never_exposes_a_half_built_service(syncer, recorded):
    maps, log = recorded
    syncer.sync(web(), NODE4, NODE6)
    log.clear()
    other = DesiredState(
        frontends=(
            frontend(
                NODE4,
                30081,
                "TCP",
                [local("10.244.1.20", 80), local("10.244.1.21", 80)],
                service="default/api",
            ),
        )
    )
    syncer.sync(other, NODE4, NODE6)
    phases = [
        ("backends", "set"),
        ("slots", "set"),
        ("maglev", "set"),
        ("services", "set"),
        ("services", "del"),
        ("maglev", "del"),
        ("slots", "del"),
        ("backends", "del"),
    ]
    positions = [[i for i, e in enumerate(log) if e == p] for p in phases]
    assert all(positions), log
    for earlier, later in zip(positions, positions[1:], strict=False):
        assert max(earlier) < min(later), log


def test_removed_service_leaves_nothing_behind(syncer, maps):
    syncer.sync(web(), NODE4, NODE6)
    syncer.sync(DesiredState(), NODE4, NODE6)
    assert (len(maps.services), len(maps.slots), maps.read_backends()) == (0, 0, {})
    assert maps.maglev.installed() == {}


def test_restart_reads_back_ids_and_tables_and_rewrites_nothing(syncer, maps, dp_config):
    state = web(affinity_timeout=30)
    syncer.sync(state, NODE4, NODE6)
    restarted = Syncer(Maps.open(maps.pin_root), dp_config)
    assert restarted.frontends == syncer.frontends
    assert restarted.backend_ids == syncer.backend_ids
    res = restarted.sync(state, NODE4, NODE6)
    # the table's fingerprint says it was built from these backends: not rebuilt
    assert (res.tables, res.deletes, res.writes) == (0, 0, 1)  # the node config only
    assert restarted.backend_ids == syncer.backend_ids


def test_every_maglev_group_gets_a_table_sized_from_its_backends(syncer, maps, dp_config):
    """No cap on Maglev groups (there were 64 rings): 300 Services, each with its own table,
    100 slots a backend from the ladder of sizes; a second sync builds none again."""
    fes = tuple(
        frontend(NODE4, 30000 + i, "TCP", WEB[: 1 + i % 3] if i % 50 else WEB * 0,
                 service=f"default/s{i}")
        for i in range(300)
    )  # fmt: skip
    syncer.sync(DesiredState(), NODE4, NODE6)  # what an earlier test left
    syncer.table_budget = 60  # all in one sync, however slow the machine
    res = syncer.sync(DesiredState(frontends=fes), NODE4, NODE6)
    tables = maps.maglev.installed()
    assert res.tables == len(tables) == 294  # every 50th has no backend, and no table
    for fe in fes:
        v = syncer.frontends[fe.key]
        assert v.algorithm == ALG_NUM[Algorithm.MAGLEV]
        if fe.backends:
            want = 251 if len(fe.backends) <= 2 else 1021  # 100 slots a backend
            assert tables[v.group][0] == table_size(len(fe.backends), dp_config.ring_size) == want
        else:
            assert v.group not in tables
    print(f"{res.tables} tables, {res.table_bytes / 2**10:.0f} KiB, {res.seconds * 1000:.0f} ms")
    assert syncer.sync(DesiredState(frontends=fes), NODE4, NODE6).tables == 0


def test_tables_past_the_budget_are_due_and_built_by_the_next_syncs(syncer, maps):
    """With no budget, a sync builds one table and leaves the others due (their frontends
    pick by flow hash over the slots meanwhile); the next syncs build the rest with nothing
    else changed. A due group whose backends change meanwhile gets the table of its new
    backends, and a group that had a table and changes past the budget loses the stale one."""
    fes = tuple(frontend(NODE4, 30000 + i, "TCP", WEB, service=f"default/s{i}") for i in range(4))
    syncer.sync(DesiredState(), NODE4, NODE6)  # what an earlier test left
    syncer.table_budget = 0
    res = syncer.sync(DesiredState(frontends=fes), NODE4, NODE6)
    assert (res.tables, res.tables_due, len(maps.maglev.installed())) == (1, 3, 1)
    res = syncer.sync(DesiredState(frontends=fes), NODE4, NODE6)
    assert (res.tables, res.tables_due, len(maps.maglev.installed())) == (1, 2, 2)
    fewer = tuple(frontend(NODE4, 30000 + i, "TCP", WEB[:2], service=f"default/s{i}")
                  for i in range(4))  # fmt: skip
    res = syncer.sync(DesiredState(frontends=fewer), NODE4, NODE6)
    # one rebuilt, the other table (stale: it names the backend that goes) removed
    assert (res.tables, res.tables_due, len(maps.maglev.installed())) == (1, 3, 1)
    assert maps.read_backends()  # the backend left is deleted only after the stale table
    while res.tables_due:
        res = syncer.sync(DesiredState(frontends=fewer), NODE4, NODE6)
    backends = maps.read_backends()
    names = sorted(b.name for b in WEB[:2])
    for fe in fewer:
        v = syncer.frontends[fe.key]
        got = [backends[i].address for i in maps.maglev.read(v.group)]
        addr = {b.name: b.address for b in WEB}
        assert got == [addr[names[i]] for i in build_table(names, 251)]


def test_source_ranges_follow_the_frontend(syncer, maps):
    syncer.sync(web(source_ranges=("203.0.113.0/24", "2001:db8::/32")), NODE4, NODE6)
    assert len(maps.read_source_ranges()) == 2  # one set per frontend
    syncer.sync(web(), NODE4, NODE6)
    assert maps.read_source_ranges() == {}


def test_service_address_space_follows_the_state_and_survives_a_restart(syncer, maps, dp_config):
    """ClusterIPs as full-length prefixes, ServiceCIDRs as ranges (a /32 range and a ClusterIP
    at one address: the ClusterIP); unchanged, nothing is written; a restart reads them back."""
    space = DesiredState(
        cluster_ips=frozenset({"10.96.0.10", "fd00:10:96::a"}),
        service_cidrs=("10.96.0.0/16", "fd00:10:96::/112", "10.97.0.1"),
    )
    syncer.sync(space, NODE4, NODE6)
    nets = {"10.96.0.10": 1, "fd00:10:96::a": 1, "10.96.0.0/16": 2, "fd00:10:96::/112": 2}
    assert maps.read_service_nets() == {**nets, "10.97.0.1": 2}
    assert syncer.sync(space, NODE4, NODE6).writes == 0
    restarted = Syncer(Maps.open(maps.pin_root), dp_config)
    assert restarted.sync(space, NODE4, NODE6).writes <= 1  # the node config at most
    moved = DesiredState(cluster_ips=frozenset({"10.97.0.1"}), service_cidrs=("10.96.0.0/16",))
    res = restarted.sync(moved, NODE4, NODE6)
    assert maps.read_service_nets() == {"10.97.0.1": 1, "10.96.0.0/16": 2}
    assert res.deletes == 3
    restarted.sync(DesiredState(), NODE4, NODE6)
    assert maps.read_service_nets() == {}


def test_what_each_frontend_lost_is_reported_for_the_udp_reconciler(syncer):
    """A backend removed from a frontend, or still there but no longer serving, is 'gone' for
    that frontend (its connected UDP sockets are reset); one that only turned unready while
    serving (draining) is not, nor is anything on a sync that changed nothing."""
    syncer.sync(web(), NODE4, NODE6)
    ids = {v.id for v in syncer.frontends.values()}
    a, b, c = WEB
    res = syncer.sync(web(backends=[a, b]), NODE4, NODE6)  # c removed
    assert res.gone == {(i, c.address, c.port) for i in ids}
    assert syncer.sync(web(backends=[a, b]), NODE4, NODE6).gone == set()
    unready = dataclasses.replace(b, ready=False, terminating=True)  # serving: draining
    res = syncer.sync(web(backends=[a], draining=(unready,)), NODE4, NODE6)
    assert res.gone == set()
    stopped = dataclasses.replace(unready, serving=False)
    res = syncer.sync(web(backends=[a], draining=(stopped,)), NODE4, NODE6)
    assert res.gone == {(i, b.address, b.port) for i in ids}


def test_algorithm_and_policy_flags(syncer):
    syncer.sync(
        DesiredState(
            frontends=(
                frontend(
                    NODE4,
                    30080,
                    "TCP",
                    WEB,
                    algorithm=Algorithm.SOURCE_HASH,
                    preserve_client_ip=True,
                ),
            )
        ),
        NODE4,
        NODE6,
    )
    v = syncer.frontends[(NODE4, 30080, "TCP", Scope.EXTERNAL)]
    assert (v.algorithm, v.flags, v.count) == (2, 0x1, 3)


def maps_view(maps):
    """What the maps say, without ids: per frontend (count, algorithm, flags, affinity,
    backends in slot order), every backend's flags, and per frontend its Maglev table as
    backend addresses (None: it has none); and the groups that have a table."""
    slots, backends = maps.read_slots(), maps.read_backends()
    out, tables = {}, {}
    for key, v in maps.read_services().items():
        group = slots.get(v.group, {})
        addrs = tuple((backends[group[s]].address, backends[group[s]].port) for s in sorted(group))
        out[key] = (v.count, v.algorithm, v.flags, v.affinity_timeout, addrs[: v.count])
        table = maps.maglev.read(v.group)
        tables[key] = None if table is None else [backends[i].address for i in table]
    flags = {(b.address, b.port): b.flags for b in backends.values()}
    return out, flags, tables, set(maps.maglev.installed())


def expected_table(fe, ring_size):
    """The Maglev table of a frontend's backends as addresses, from maglev.py directly."""
    if fe.algorithm is not Algorithm.MAGLEV or not fe.backends:
        return None
    ordered = sorted(fe.backends, key=lambda b: b.name)
    index = build_table([b.name for b in ordered], table_size(len(ordered), ring_size))
    return [ordered[i].address for i in index]


def check_tables(state, tables, groups, syncer, ring_size, step):
    """Every Maglev frontend with backends reads exactly the table of its backends, the
    others none, and no table is left that no frontend reads."""
    for fe in state.frontends:
        assert tables[fe.key] == expected_table(fe, ring_size), (step, fe.key)
    reading = {syncer.frontends[fe.key].group for fe in state.frontends if tables[fe.key]}
    assert groups == reading, step


def expected_view(state):
    out, flags = {}, {}
    for fe in state.frontends:
        ordered = tuple((b.address, b.port) for b in sorted(fe.backends, key=lambda b: b.name))
        fl = (SVC_F_SOURCE_RANGES if fe.source_ranges else 0) | (
            SVC_F_PRESERVE_CLIENT if fe.preserve_client_ip else 0
        )
        out[fe.key] = (len(ordered), fe.algorithm, fl, fe.affinity_timeout, ordered)
        for b in fe.backends + fe.draining:
            f = (
                (BE_F_LOCAL if b.local else 0)
                | (BE_F_TERMINATING if b.terminating or not b.ready else 0)
                | (BE_F_NOT_SERVING if not b.serving else 0)
            )
            flags[(b.address, b.port)] = flags.get((b.address, b.port), 0) | f
    return out, flags


def test_incremental_syncs_leave_the_maps_as_a_full_sync_would(syncer, maps, dp_config):
    """Random changes, each synced incrementally (unchanged Services handed over as the
    same objects, as the agent's translator does): after every step the maps hold exactly
    the desired state, every Maglev group with backends reads the table of its backends,
    and no table is left over. A restarted Syncer then finds nothing to change."""
    import random

    rng = random.Random(7)
    algos = [Algorithm.MAGLEV, Algorithm.MAGLEV, Algorithm.RANDOM, Algorithm.SOURCE_HASH]
    services: dict[int, tuple] = {}

    def make(i):
        n = rng.randrange(0, 5)
        backends = tuple(
            local(
                f"10.244.{rng.randrange(3)}.{rng.randrange(1, 8)}",
                8080,
                terminating=rng.random() < 0.2,
                ready=rng.random() < 0.9,
                serving=rng.random() < 0.9,
            )
            for _ in range(n)
        )
        backends = tuple({(b.address, b.port): b for b in backends}.values())
        kw = {
            "service": f"default/s{i}",
            "algorithm": rng.choice(algos),
            "affinity_timeout": rng.choice([0, 0, 30]),
            "source_ranges": ("10.0.0.0/8",) if rng.random() < 0.2 else (),
        }
        return (
            frontend(NODE4, 30000 + i, "TCP", backends, **kw),
            frontend(f"192.168.198.{240 + i % 10}", 80 + i, "TCP", backends, **kw),
        )

    for step in range(40):
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(12)
            if i in services and rng.random() < 0.3:
                del services[i]
            else:
                services[i] = make(i)
        state = DesiredState(frontends=tuple(fe for i in sorted(services) for fe in services[i]))
        syncer.sync(state, NODE4, NODE6)
        got, flags, tables, groups = maps_view(maps)
        want, want_flags = expected_view(state)
        assert set(got) == set(want), step
        for key, (count, algo, fl, aff, addrs) in want.items():
            g = got[key]
            assert g == (count, ALG_NUM[algo], fl, aff, addrs), (step, key)
        assert flags == want_flags, step
        check_tables(state, tables, groups, syncer, dp_config.ring_size, step)
    restarted = Syncer(Maps.open(maps.pin_root), dp_config)
    res = restarted.sync(state, NODE4, NODE6)
    assert (res.deletes, res.tables) == (0, 0)
    assert maps_view(maps) == (got, flags, tables, groups)


def test_translator_hints_sync_only_what_changed_and_the_maps_stay_right(syncer, maps, dp_config):
    """The agent's pipeline: Services and slices -> Translator (which patches and names the
    changed Services) -> sync (which looks at those only). Random changes, conflicts between
    Services now and then (the translator then assembles everything again): after each step
    the translation equals translate()'s and the maps hold exactly that state."""
    import random

    from controlplane.model import Translator, translate
    from controlplane.model.snapshot import ValueTracker
    from tests.helpers import NODE1, ep, service, slice_

    rng = random.Random(11)
    services, slices = {}, {}

    def make(i):
        kind = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
        ip = f"10.96.5.{rng.randrange(1, 40)}"  # now and then two collide: a conflict
        spec = {"type": kind, "clusterIP": ip}
        if kind != "ClusterIP":
            spec["ports"] = [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30100 + i}
            ]
        if kind == "LoadBalancer":
            spec["status"] = {"loadBalancer": {"ingress": [{"ip": f"192.168.198.{240 + i}"}]}}
        services[i] = service(f"s{i}", **spec)
        slices[i] = make_slice(i)

    def make_slice(i):
        n = rng.randrange(0, 4)
        eps = [ep(f"10.244.{rng.randrange(2)}.{rng.randrange(1, 9)}") for _ in range(n)]
        eps = list({e["addresses"][0]: e for e in eps}.values())
        return slice_(f"s{i}", eps, ports=[{"name": "http", "port": 8080}])

    translator, tracker = Translator(), ValueTracker()
    hinted = 0
    for step in range(60):
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(10)
            r = rng.random()
            if i in services and r < 0.2:
                del services[i], slices[i]
            elif i in services and r < 0.7:
                slices[i] = make_slice(i)  # endpoints change: the common case
            else:
                make(i)
        svcs, sls = list(services.values()), list(slices.values())
        state = translator(svcs, sls, NODE1, None, tracker.changes(svcs, sls))
        assert state == translate(svcs, sls, NODE1), step
        hinted += state.changed is not None
        syncer.sync(state, NODE4, NODE6)
        got, flags, tables, groups = maps_view(maps)
        want, want_flags = expected_view(state)
        assert set(got) == set(want), step
        for key, (count, algo, fl, aff, addrs) in want.items():
            assert got[key] == (count, ALG_NUM[algo], fl, aff, addrs), (step, key)
        assert flags == want_flags, step
        check_tables(state, tables, groups, syncer, dp_config.ring_size, step)
    assert hinted > 20  # the fast path was taken, and often


def test_raw_entries_match_the_ctypes_ones_and_a_wrong_layout_is_refused(maps):
    """The bytes the sync writes are exactly what bcc's types of maps.h would write."""
    import ctypes as ct
    import socket

    from controlplane.datapath.maps import BackendValue, SvcValue, layout, set_addr
    from controlplane.model.objects import Protocol

    key = ("fd00:10:96::10", 8080, Protocol.UDP, Scope.EXTERNAL)
    assert maps.svc_key_raw(*key) == bytes(maps.svc_key(*key))
    value = SvcValue(7, 3, 600, 12, 2, 5)
    leaf = maps.services.Leaf()
    for name in ("id", "group", "affinity_timeout", "count", "algorithm"):
        setattr(leaf, name, getattr(value, name))
    leaf.flags = value.flags
    assert maps.svc_leaf_raw(value) == bytes(leaf)
    backend = BackendValue("10.244.1.5", 8080, 3)
    be = maps.backends.Leaf()
    set_addr(be.addr, backend.address)
    be.port, be.flags = socket.htons(backend.port), backend.flags
    assert maps.backend_leaf_raw(backend) == bytes(be)
    assert maps.slot_key_raw(9, 4) == bytes(maps.slot_key(9, 4))

    class Entry(ct.Structure):
        _fields_ = [("a", ct.c_uint32), ("b", ct.c_uint16)]

    assert layout(Entry, {"a": "I", "b": "H"}).pack(1, 2) == bytes(Entry(1, 2))
    with pytest.raises(ValueError, match="Entry.a: 4 bytes"):
        layout(Entry, {"a": "H", "b": "H"})
