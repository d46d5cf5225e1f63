"""DesiredState -> the maps, with the smallest set of writes, in an order that never lets a
packet see a half-built Service:

  backends -> slots -> each changed group's Maglev table (a new one swapped in whole) ->
  service entries -> then, in reverse, stale service entries, slots past the new count, tables
  and backends nobody uses any more.

A Maglev table costs about 0.5 ms to build at M = 1021, so a first sync of thousands of
groups builds them within a time budget (Syncer.table_budget) and leaves the rest due for the
next syncs (SyncResult.tables_due); until its table is in, a group's frontends pick their slot
by flow hash, the same choice on every node. A table is never left stale: one that no longer
matches its group is replaced or removed before the backends it names can go.

Identities are stable: a backend keeps its id for as long as it exists (conntrack entries
name backends by id), a frontend keeps its id (its counters), a group of frontends sharing one
backend list keeps its slots and Maglev table. A new Syncer reads all of them back from the pinned
maps, so a restarted agent rewrites nothing that is already right and breaks no flow.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import time
from dataclasses import dataclass, field

import numpy as np

from ..maglev import build_table, fingerprint, table_size
from ..model.state import Algorithm, Backend, DesiredState, Frontend, FrontendKind, NoBackend
from .config import DatapathConfig
from .maglev_tables import table_bytes
from .maps import (
    ALG_NUM,
    ANNOUNCE_GRACE_NS,
    BE_F_DSR,
    BE_F_LOCAL,
    BE_F_NOT_SERVING,
    BE_F_TERMINATING,
    CLOCK_COARSE,
    NET_CLUSTER_IP,
    NET_SERVICE_CIDR,
    SVC_F_DROP_EMPTY,
    SVC_F_DSR,
    SVC_F_PRESERVE_CLIENT,
    SVC_F_SOURCE_RANGES,
    U32,
    BackendValue,
    Maps,
    SvcValue,
    get_addr,
    set_addr,
)
from .sockets import netns_cookie

FrontendKey = tuple  # (address, port, Protocol, Scope)
GroupKey = tuple[str, str, str, str, bool]


def group_key(fe: Frontend) -> GroupKey:
    """Frontends that always share one backend list: the same Service port, family and scope,
    and either the ClusterIP (internalTrafficPolicy) or the external addresses."""
    return (
        fe.service,
        fe.port_name,
        str(fe.family),
        str(fe.scope),
        fe.kind is FrontendKind.CLUSTER_IP,
    )


class Batch:
    """Writes to one map, given as raw key and value bytes (Maps.*_raw), gathered and made
    with BPF_MAP_UPDATE_BATCH in the order given: a full sync of 10,000 Services is 265,000
    writes, and a syscall and two ctypes objects each would cost seconds."""

    def __init__(self, table) -> None:
        self.table, self.keys, self.leaves = table, [], []

    def set(self, key: bytes, leaf: bytes) -> None:
        self.keys.append(key)
        self.leaves.append(leaf)
        if len(self.keys) >= 4096:  # in chunks: a whole sync's worth would stay in the
            self.flush()  # allocator's arenas (RSS) long after

    def flush(self) -> None:
        key_type, leaf_type, n = self.table.Key, self.table.Leaf, len(self.keys)
        if n < 16:  # a few: one by one, as cheap and simpler to read in traces
            for k, v in zip(self.keys, self.leaves, strict=True):
                self.table[key_type.from_buffer_copy(k)] = leaf_type.from_buffer_copy(v)
        elif n:
            self.table.items_update_batch(
                (key_type * n).from_buffer_copy(b"".join(self.keys)),
                (leaf_type * n).from_buffer_copy(b"".join(self.leaves)),
            )
        self.keys, self.leaves = [], []


def backend_flags(b: Backend) -> int:
    """A backend's flags in one group: local; existing flows only (terminating, or not ready:
    a fallback candidate is terminating too); its UDP flows move on (not serving); its node
    takes DSR's carrier off."""
    return (
        (BE_F_LOCAL if b.local else 0)
        | (BE_F_TERMINATING if b.terminating or not b.ready else 0)
        | (BE_F_NOT_SERVING if not b.serving else 0)
        | (BE_F_DSR if b.dsr else 0)
    )


def _same(before: tuple[Frontend, ...] | None, now: list[Frontend]) -> bool:
    """The group's frontends are those of the last sync: the same objects (what a caching
    translator hands over), else equal ones."""
    return (
        before is not None
        and len(before) == len(now)
        and all(a is b or a == b for a, b in zip(before, now, strict=True))
    )


@dataclass
class Group:
    id: int
    backends: tuple[int, ...] = ()  # backend ids in slots 1..n
    table: tuple[int, int] | None = None  # (M, fingerprint) of its Maglev table; None: none


@dataclass
class _Plan:
    """What one sync writes, worked out before the first write (Syncer._plan)."""

    full: bool  # the first sync after a (re)start: everything, and whatever the maps hold
    wanted: dict[GroupKey, list[Frontend]]  # the groups looked at, with their frontends
    applied: dict[GroupKey, tuple[Frontend, ...]]  # the last sync's (the Syncer's own)
    changed: set[GroupKey]  # the groups to write or remove (and those with a table due)
    removed: set[GroupKey]  # the groups that went
    gone_ids: set[int]  # the ids of groups that went and that no new group took over

    def fes_of(self, gk: GroupKey) -> list[Frontend]:
        """A group's frontends: as wanted now, else (a group with its table due) as applied."""
        return self.wanted[gk] if gk in self.wanted else list(self.applied[gk])

    def live(self) -> list[GroupKey]:
        """The changed groups that stay (to write, not to remove)."""
        return [gk for gk in self.changed if gk not in self.removed]


class SyncError(RuntimeError):
    """The desired state does not fit the maps as sized."""


@dataclass
class SyncResult:
    writes: int = 0
    deletes: int = 0
    tables: int = 0  # Maglev tables built and swapped in
    table_bytes: int = 0  # the kernel memory those take
    tables_due: int = 0  # groups whose table waits for the next sync (the budget ran out)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    # (frontend id, backend address, port) for each backend a frontend lost or that stopped
    # serving: the connected UDP sockets pointed there through that frontend are reset
    # (sockets.py), as kube-proxy clears the conntrack of a removed UDP endpoint
    gone: set[tuple[int, str, int]] = field(default_factory=set)


class Syncer:
    def __init__(self, maps: Maps, cfg: DatapathConfig) -> None:
        self.maps, self.cfg = maps, cfg
        self.frontends: dict[FrontendKey, SvcValue] = maps.read_services()
        self.backends: dict[int, BackendValue] = maps.read_backends()
        self.backend_ids = {(v.address, v.port): i for i, v in self.backends.items()}
        self.free_from = 1  # no slot below this is free: the search for one starts here
        # what the last sync applied, for the next one to skip what did not change
        self.synced = False
        self.applied: dict[GroupKey, tuple[Frontend, ...]] = {}
        self.contrib: dict[GroupKey, dict[tuple[str, int], int]] = {}  # backend flags
        # backend -> how many groups use it with each flag value (0-15), 16 bits a count,
        # packed in one int: one entry per backend, not a dict (100,000 backends at 10k)
        self.users: dict[tuple[str, int], int] = {}
        # Maglev groups whose table was not built yet (the budget ran out): the next sync
        # builds them, whether or not they changed
        self.tables_due: set[GroupKey] = set()
        self.table_budget = 0.25  # seconds of table building a sync, past the first table
        self.service_groups: dict[str, set[GroupKey]] = {}  # Service -> its applied groups
        self.serial = 0  # of the last state applied (a translator's; 0: none known)
        self.ranges: dict[int, set[str]] = maps.read_source_ranges()
        self.nets: dict[str, int] = maps.read_service_nets()  # prefix -> XLB_NET_*
        self.nets_from: tuple | None = None  # the (cluster_ips, service_cidrs) written last
        self.node_addrs: set[str] = maps.read_node_addrs()
        self.groups: dict[int, Group] = {}
        slots = maps.read_slots()
        tables = maps.maglev.installed()
        for v in self.frontends.values():
            if v.group not in self.groups:
                by_slot = slots.get(v.group, {})
                self.groups[v.group] = Group(
                    v.group, tuple(by_slot[s] for s in sorted(by_slot)), tables.get(v.group)
                )
        self.orphan_tables = set(tables) - set(self.groups)  # removed by the first sync
        self.group_ids: dict[GroupKey, int] = {}
        self.config_value: tuple | None = None
        self.netns = netns_cookie()  # the node's: this agent runs in its network namespace
        self.lb_ips: set[str] = {get_addr(k) for k in maps.lb_ips}

    # -- identities ------------------------------------------------------------------------------

    def _backend_id(self, key: tuple[str, int]) -> int:
        """The id of the backend at this (address, port): its slot in the backends array.
        A new backend takes the lowest free slot (0 is never used); a tracked flow whose
        backend's slot was reused notices because the address no longer matches."""
        bid = self.backend_ids.get(key)
        if bid is not None:
            return bid
        free = self.free_from
        while free in self.backends:
            free += 1
        if free >= self.cfg.max_backends:
            raise SyncError(f"more than {self.cfg.max_backends - 1} backends: raise --max-backends")
        self.free_from = free + 1
        self.backend_ids[key] = free
        self.backends[free] = BackendValue("", 0, 0)  # reserved until written
        return free

    def _adopt_groups(self, wanted: dict[GroupKey, list[Frontend]]) -> None:
        """Each wanted group takes the id its frontends already have in the maps, if free."""
        taken = set(self.group_ids.values())
        for gk, fes in wanted.items():
            if gk in self.group_ids:
                continue
            for fe in fes:
                old = self.frontends.get(fe.key)
                if old is not None and old.group not in taken and old.group in self.groups:
                    self.group_ids[gk] = old.group
                    taken.add(old.group)
                    break
        next_id = max([*self.groups, *taken], default=0) + 1
        for gk in wanted:
            if gk not in self.group_ids:
                self.group_ids[gk] = next_id
                self.groups[next_id] = Group(next_id)
                next_id += 1

    # -- the sync ----------------------------------------------------------------------------------

    def sync(
        self,
        state: DesiredState,
        node_addr4: str = "0.0.0.0",
        node_addr6: str = "::",
        uplink_mac: str = "",
        fib_cache: bool = True,
    ) -> SyncResult:
        """Writes what differs, in the order of the module's docstring, one phase a method.
        Groups whose frontends are the very objects (or equal to the ones) of the last sync
        are skipped whole, so one endpoint change costs one group's writes and a walk over
        the group keys, not a walk over every backend; the first sync after a (re)start
        looks at everything, and removes whatever the maps hold beyond it.
        fib_cache: the node routes by destination alone (no policy rules), so the datapath
        may cache FIB answers."""
        start = time.perf_counter()
        res = SyncResult()
        plan = self._plan(state)
        res.gone = self._gone(plan.changed, plan.removed, plan.fes_of)
        unused = self._write_backends(plan, res)
        old_counts = self._write_groups(plan, res)
        wanted_keys = self._write_frontends(plan, res)
        self._delete_stale(plan, wanted_keys, old_counts, unused, res)
        self._remember(plan)
        self._sync_nets(state, res)
        self._sync_node_addrs(state.node_addresses, res)
        self.synced = True
        self.serial = state.serial
        self._sync_config(node_addr4, node_addr6, uplink_mac, fib_cache, res)
        res.seconds = time.perf_counter() - start
        return res

    def _plan(self, state: DesiredState) -> _Plan:
        """Which groups this sync writes: those of the Services the translator says changed
        since the state applied last (else every group, compared with the last sync's), and
        those that went; group ids adopted from the maps or given."""
        full = not self.synced
        hinted = not full and state.changed is not None and state.base == self.serial != 0
        wanted: dict[GroupKey, list[Frontend]] = {}
        if hinted:
            for fe in state.frontends:
                if fe.service in state.changed:
                    wanted.setdefault(group_key(fe), []).append(fe)
            before = {gk for svc in state.changed for gk in self.service_groups.get(svc, ())}
            removed = {gk for gk in before if gk not in wanted}
        else:
            for fe in state.frontends:
                wanted.setdefault(group_key(fe), []).append(fe)
            removed = {gk for gk in self.applied if gk not in wanted}
        changed = {
            gk for gk, fes in wanted.items() if full or not _same(self.applied.get(gk), fes)
        } | removed
        changed |= {gk for gk in self.tables_due if gk not in removed and gk in self.applied}
        gone_ids = {self.group_ids[gk] for gk in removed if gk in self.group_ids}
        for gk in removed:
            self.group_ids.pop(gk, None)
        self._adopt_groups({gk: wanted[gk] for gk in changed if gk in wanted})
        # a new group may have taken over a removed one's id (its frontends moved): it lives on
        gone_ids -= {self.group_ids[gk] for gk in changed if gk not in removed}
        if full:  # groups read back from the maps that no wanted group took
            gone_ids |= set(self.groups) - set(self.group_ids.values())
        return _Plan(full, wanted, self.applied, changed, removed, gone_ids)

    def _write_backends(self, plan: _Plan, res: SyncResult) -> list[tuple[str, int]]:
        """1. Backends, new-flow candidates and draining ones alike: each backend's flags are
        the OR over the groups using it; only backends of changed groups are looked at. The
        backends no group uses any more (deleted last)."""
        m = self.maps
        touched: set[tuple[str, int]] = set()
        for gk in plan.changed:
            for key, f in self.contrib.pop(gk, {}).items():
                self.users[key] -= 1 << (16 * f)
                touched.add(key)
            if gk in plan.removed:
                continue
            mine: dict[tuple[str, int], int] = {}
            for fe in plan.fes_of(gk):
                for b in fe.backends + fe.draining:
                    f = backend_flags(b)
                    mine[(b.address, b.port)] = mine.get((b.address, b.port), 0) | f
            self.contrib[gk] = mine
            for key, f in mine.items():
                self.users[key] = self.users.get(key, 0) + (1 << (16 * f))
                touched.add(key)
        unused: list[tuple[str, int]] = []
        backends = Batch(m.backends)
        for key in sorted(touched):
            users = self.users.get(key, 0)
            if not users:
                self.users.pop(key, None)
                unused.append(key)
                continue
            f = 0
            for flag in range(1 << 4):  # OR of the flags of every group using it
                if (users >> (16 * flag)) & 0xFFFF:
                    f |= flag
            bid = self._backend_id(key)
            value = BackendValue(key[0], key[1], f)
            if self.backends.get(bid) != value:
                backends.set(U32(bid), m.backend_leaf_raw(value))
                self.backends[bid] = value
                res.writes += 1
        backends.flush()
        return unused

    def _write_groups(self, plan: _Plan, res: SyncResult) -> dict[int, int]:
        """2. Slots and 3. Maglev tables, per changed group; each group's former backend
        count, for the deletes."""
        m = self.maps
        old_counts: dict[int, int] = {}
        slots = Batch(m.slots)
        self.table_deadline: float | None = None  # set by the first table built
        self.installs: list[tuple[Group, tuple[int, int], np.ndarray]] = []
        self.stale: list[Group] = []
        if self.orphan_tables:  # a predecessor's, of groups nothing names: gone before a new
            res.deletes += m.maglev.remove(sorted(self.orphan_tables))  # group takes the id
            self.orphan_tables = set()
        for gk in sorted(plan.live(), key=lambda g: self.group_ids.get(g, 0)):
            fes = plan.fes_of(gk)
            group = self.groups[self.group_ids[gk]]
            ordered = sorted(fes[0].backends, key=lambda b: b.name)
            ids = tuple(self._backend_id((b.address, b.port)) for b in ordered)
            old_counts[group.id] = len(group.backends)
            for slot, bid in enumerate(ids, start=1):
                if slot > len(group.backends) or group.backends[slot - 1] != bid:
                    slots.set(m.slot_key_raw(group.id, slot), U32(bid))
                    res.writes += 1
            group.backends = ids
            if fes[0].algorithm is Algorithm.MAGLEV and ordered:
                self._table(gk, group, ordered, res)
            else:  # no table is read (count 0, or another algorithm): removed at the end
                self.tables_due.discard(gk)
        slots.flush()
        self._swap_tables(res)
        res.tables_due = len(self.tables_due)
        return old_counts

    def _swap_tables(self, res: SyncResult) -> None:
        """The tables _table built, swapped in, and the stale ones it gave up, removed: in a
        batch each (maglev_tables.py says why)."""
        if self.installs:
            res.table_bytes += self.maps.maglev.install(
                [(g.id, table, wanted[1]) for g, wanted, table in self.installs]
            )
            for group, wanted, _ in self.installs:
                group.table = wanted
            res.tables += len(self.installs)
        res.deletes += self._drop_tables(self.stale)
        self.installs, self.stale = [], []

    def _drop_tables(self, groups: list[Group]) -> int:
        if not groups:
            return 0
        dropped = self.maps.maglev.remove([g.id for g in groups])
        for group in groups:
            group.table = None
        return dropped

    def _write_frontends(self, plan: _Plan, res: SyncResult) -> set[FrontendKey]:
        """4. Service entries of changed groups, and their source ranges written before the
        entry enables them; the keys of every frontend written."""
        m = self.maps
        free_ids = None
        wanted_keys: set[FrontendKey] = set()
        services = Batch(m.services)
        for gk in plan.live():
            group = self.groups[self.group_ids[gk]]
            for fe in plan.fes_of(gk):
                wanted_keys.add(fe.key)
                old = self.frontends.get(fe.key)
                if old is None and free_ids is None:
                    used_ids = {v.id for v in self.frontends.values()}
                    free_ids = iter(i for i in range(self.cfg.max_services) if i not in used_ids)
                svc_id = old.id if old is not None else next(free_ids, None)
                if svc_id is None:  # a typed error, not a bare StopIteration
                    raise SyncError(
                        f"more than {self.cfg.max_services} frontends: the services map is "
                        "full; raise max_services (the datapath keeps its last state)"
                    )
                self._sync_ranges(svc_id, set(fe.source_ranges), res)
                value = SvcValue(
                    id=svc_id,
                    group=group.id,
                    affinity_timeout=fe.affinity_timeout,
                    count=len(group.backends),
                    algorithm=ALG_NUM[fe.algorithm],
                    flags=(
                        (SVC_F_PRESERVE_CLIENT if fe.preserve_client_ip else 0)
                        | (SVC_F_DROP_EMPTY if fe.no_backend is NoBackend.DROP else 0)
                        | (SVC_F_SOURCE_RANGES if fe.source_ranges else 0)
                        | (SVC_F_DSR if fe.dsr else 0)
                    ),
                )
                if old != value:
                    services.set(m.svc_key_raw(*fe.key), m.svc_leaf_raw(value))
                    self.frontends[fe.key] = value
                    res.writes += 1
        services.flush()
        return wanted_keys

    def _delete_stale(
        self,
        plan: _Plan,
        wanted_keys: set[FrontendKey],
        old_counts: dict[int, int],
        unused: list[tuple[str, int]],
        res: SyncResult,
    ) -> None:
        """5. Deletes, in reverse order of dependence: service entries no group wants, slots
        past each group's new count (all of a gone group's), backends nobody uses; after a
        restart, whatever the maps held beyond the state."""
        m = self.maps
        if plan.full:
            stale = [k for k in self.frontends if k not in wanted_keys]
        else:  # only frontends of changed groups can have gone (a moved one is re-added)
            stale = [
                fe.key
                for gk in plan.changed
                for fe in self.applied.get(gk, ())
                if fe.key not in wanted_keys
            ]
        for key in stale:
            old = self.frontends.pop(key, None)
            if old is None:
                continue
            del m.services[m.svc_key(*key)]
            res.deletes += 1
            self._sync_ranges(old.id, set(), res)
        checked = (
            list(self.groups)
            if plan.full
            else [self.group_ids[gk] for gk in plan.live()] + list(plan.gone_ids)
        )
        reading = self._reading_tables(plan)
        unread = [  # their frontends are gone or no longer read them
            self.groups[gid]
            for gid in checked
            if self.groups[gid].table is not None and gid not in reading
        ]
        res.deletes += self._drop_tables(unread)
        for gid in checked:
            group = self.groups[gid]
            first_stale = 1 if gid in plan.gone_ids else len(group.backends) + 1
            for slot in range(first_stale, max(old_counts.get(gid, 0), len(group.backends)) + 1):
                self._delete(m.slots, m.slot_key(gid, slot), res)
            if gid in plan.gone_ids:
                del self.groups[gid]

        if plan.full:  # whatever the maps held that nothing uses
            unused = [(v.address, v.port) for v in self.backends.values() if v.address]
            unused = [k for k in unused if k not in self.users]
        for key in unused:
            bid = self.backend_ids.pop(key, None)
            if bid is None:
                continue
            self.backends.pop(bid, None)
            self.free_from = min(self.free_from, bid)
            self._delete(m.backends, ct.c_uint32(bid), res)
        if plan.full:  # reserved or unreadable slots nobody claims
            for bid in [b for b, v in self.backends.items() if not v.address]:
                self.backends.pop(bid)
                self._delete(m.backends, ct.c_uint32(bid), res)

    def _remember(self, plan: _Plan) -> None:
        """What this sync applied, for the next one to skip what does not change."""
        for gk in plan.removed:
            self.applied.pop(gk, None)
            self.tables_due.discard(gk)
            groups = self.service_groups.get(gk[0])
            if groups is not None:
                groups.discard(gk)
                if not groups:
                    del self.service_groups[gk[0]]
        for gk in plan.live():
            self.applied[gk] = tuple(plan.fes_of(gk))
            self.service_groups.setdefault(gk[0], set()).add(gk)

    def _table(self, gk: GroupKey, group: Group, ordered: list[Backend], res: SyncResult) -> None:
        """Makes the group's Maglev table the one its backends give (names in slot order, ids
        as now): kept if the kernel's already is, else built and swapped in while the sync's
        table budget lasts (the first always), else removed and left due."""
        names = [b.name for b in ordered]
        size = table_size(len(names), self.cfg.ring_size)
        wanted = (size, fingerprint(names, group.backends, size))
        if group.table == wanted:
            self.tables_due.discard(gk)
            return
        now = time.perf_counter()
        if self.table_deadline is None:
            self.table_deadline = now + self.table_budget
        elif now > self.table_deadline:
            if group.table is not None:  # stale: it may name backends about to go
                self.stale.append(group)
            self.tables_due.add(gk)
            return
        table = np.asarray(group.backends, dtype=np.uint32)[build_table(names, size)]
        self.tables_due.discard(gk)
        same_size = group.table is not None and group.table[0] == size
        if same_size and self.maps.maglev.rewrite(group.id, table, wanted[1]):  # in place
            group.table = wanted
            res.tables += 1
            res.table_bytes += table_bytes(size)
            return
        self.installs.append((group, wanted, table))

    def _reading_tables(self, plan: _Plan) -> set[int]:
        """The ids of the changed groups whose frontends read a Maglev table after this sync
        (a group this sync did not look at keeps what it has)."""
        return {
            self.group_ids[gk]
            for gk in plan.live()
            if (fes := plan.fes_of(gk))[0].algorithm is Algorithm.MAGLEV and fes[0].backends
        }

    def _gone(self, changed, removed, fes_of) -> set[tuple[int, str, int]]:
        """What each changed group's frontends lost since the last sync: a backend no longer
        among them, or no longer serving (by frontend id, read before this sync's writes)."""

        def serving(fe: Frontend | None) -> set[tuple[str, int]]:
            if fe is None:
                return set()
            return {(b.address, b.port) for b in fe.backends + fe.draining if b.serving}

        out: set[tuple[int, str, int]] = set()
        for gk in changed:
            old = self.applied.get(gk)
            if not old:
                continue
            lost = serving(old[0]) - serving(None if gk in removed else fes_of(gk)[0])
            for fe in old if lost else ():
                if (v := self.frontends.get(fe.key)) is not None:
                    out |= {(v.id, address, port) for address, port in lost}
        return out

    def _sync_nets(self, state: DesiredState, res: SyncResult) -> None:
        """The service address space (xlb_service_nets) after the service entries: an address
        a new Service took is served before it stops being refused. Skipped whole when the
        state's ClusterIPs and ranges are the ones written last."""
        given = (state.cluster_ips, state.service_cidrs)
        if given == self.nets_from:
            return
        wanted = dict.fromkeys(state.service_cidrs, NET_SERVICE_CIDR)
        wanted.update(dict.fromkeys(state.cluster_ips, NET_CLUSTER_IP))
        for net, kind in wanted.items():
            if self.nets.get(net) != kind:
                self.maps.service_nets[self.maps.net_key(net)] = ct.c_uint8(kind)
                res.writes += 1
        for net in [n for n in self.nets if n not in wanted]:
            self._delete(self.maps.service_nets, self.maps.net_key(net), res)
        self.nets, self.nets_from = wanted, given

    def _sync_node_addrs(self, wanted: frozenset[str], res: SyncResult) -> None:
        """Every Node's addresses, for xdp_lb to believe a DSR carrier with a NodePort."""
        if wanted == self.node_addrs:
            return
        for address in wanted - self.node_addrs:
            self.maps.node_addrs[self.maps.addr_key(address)] = ct.c_uint8(1)
            res.writes += 1
        for address in self.node_addrs - wanted:
            self._delete(self.maps.node_addrs, self.maps.addr_key(address), res)
        self.node_addrs = set(wanted)

    def _sync_ranges(self, svc_id: int, wanted: set[str], res: SyncResult) -> None:
        current = self.ranges.get(svc_id, set())
        for cidr in wanted - current:
            self.maps.source_ranges[self.maps.range_key(svc_id, cidr)] = ct.c_uint8(1)
            res.writes += 1
        for cidr in current - wanted:
            self._delete(self.maps.source_ranges, self.maps.range_key(svc_id, cidr), res)
        if wanted:
            self.ranges[svc_id] = set(wanted)
        else:
            self.ranges.pop(svc_id, None)

    def _sync_config(
        self, addr4: str, addr6: str, mac: str, fib_cache: bool, res: SyncResult
    ) -> None:
        value = (addr4, addr6, mac, fib_cache, self.cfg.snat_ports, self.cfg.ct_timeouts,
                 self.cfg.hash_seed, self.netns, self.cfg.local_delivery)  # fmt: skip
        if value == self.config_value:
            return
        leaf = self.maps.config.Leaf()
        set_addr(leaf.node_addr4, addr4)
        set_addr(leaf.node_addr6, addr6)
        leaf.snat_port_min, leaf.snat_port_max = self.cfg.snat_ports
        leaf.ring_size = self.cfg.ring_size  # (the largest table: for `xlb status`)
        leaf.fib_cache = int(fib_cache)
        leaf.local_redirect = int(self.cfg.local_delivery == "redirect")
        leaf.ct_timeout[:] = self.cfg.ct_timeouts.slots()
        leaf.hash_seed = self.cfg.hash_seed
        leaf.node_netns = self.netns
        if mac:
            leaf.uplink_mac[:] = bytes.fromhex(mac.replace(":", ""))
        self.maps.config[ct.c_uint32(0)] = leaf
        self.config_value = value
        res.writes += 1

    def heartbeat(self) -> None:
        """Tells the programs the agent is alive (for ARP/NDP answers); the clock is the one
        bpf_ktime_get_coarse_ns reads (CLOCK_MONOTONIC_COARSE)."""
        self.maps.heartbeat[ct.c_uint32(0)] = ct.c_uint64(time.clock_gettime_ns(CLOCK_COARSE))

    def silence(self) -> None:
        """The programs stop answering ARP/NDP at once (an agent that stops on purpose tells
        its peers it left right after, so the addresses move with no overlap)."""
        self.maps.heartbeat[ct.c_uint32(0)] = ct.c_uint64(0)

    def held_lb_ips(self) -> set[str]:
        """The LoadBalancer IPs a starting agent still holds: those its predecessor left in
        the map while the kernel still answers for them (heartbeat within the grace). Past it
        the others may have taken them over, so they are dropped before the heartbeat
        resumes, or the kernel would answer for them again beside the new owner."""
        beat = int(self.maps.heartbeat[ct.c_uint32(0)].value)
        age = time.clock_gettime_ns(CLOCK_COARSE) - beat
        if beat and age < ANNOUNCE_GRACE_NS:
            return set(self.lb_ips)
        self.sync_lb_ips(set())
        return set()

    def sync_peer_devs(self, wanted: set[int]) -> None:
        """The pod veths tc_lb_in may hand packets to (--local-delivery redirect)."""
        have = {int(k.value) for k in self.maps.peer_devs}
        for index in wanted - have:
            self.maps.peer_devs[ct.c_uint32(index)] = ct.c_uint8(1)
        for index in have - wanted:
            with contextlib.suppress(KeyError):
                del self.maps.peer_devs[ct.c_uint32(index)]

    def sync_devices(self, devices: dict[int, str]) -> None:
        """The devices the programs run on (ifindex -> MAC): their ARP/NDP answers carry
        their own MAC. Devices no longer served are removed."""
        have = {int(k.value) for k in self.maps.devices}
        for index, mac in devices.items():
            leaf = self.maps.devices.Leaf()
            leaf.mac[:] = bytes.fromhex(mac.replace(":", ""))
            self.maps.devices[ct.c_uint32(index)] = leaf
        for index in have - set(devices):
            with contextlib.suppress(KeyError):
                del self.maps.devices[ct.c_uint32(index)]

    def sync_lb_ips(self, owned: set[str]) -> tuple[set[str], set[str]]:
        """The LoadBalancer IPs xdp_lb answers ARP/NDP for; returns (taken over, given up)."""
        gained, lost = owned - self.lb_ips, self.lb_ips - owned
        for ip in gained:
            key = self.maps.lb_ips.Key()
            set_addr(key, ip)
            self.maps.lb_ips[key] = ct.c_uint8(1)
        for ip in lost:
            key = self.maps.lb_ips.Key()
            set_addr(key, ip)
            with contextlib.suppress(KeyError):
                del self.maps.lb_ips[key]
        self.lb_ips = set(owned)
        return gained, lost

    @staticmethod
    def _delete(table, key, res: SyncResult) -> None:
        try:
            del table[key]
            res.deletes += 1
        except KeyError:
            pass
