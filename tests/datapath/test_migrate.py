"""An upgrade whose maps.h changed a layout: the pinned entries are carried into maps of the
new layout, field by field by name, before the new programs are loaded."""

from __future__ import annotations

import copy
import ctypes as ct
import glob
import os
import struct

import pytest

from controlplane.datapath import loader
from controlplane.datapath.maps import Maps, addr_bytes, get_addr
from controlplane.datapath.migrate import NotCarried, converter
from controlplane.datapath.pinned import PinnedTable, read_layout, write_layout
from controlplane.datapath.programs import DatapathError
from controlplane.datapath.syscall import map_create, obj_pin
from tests.datapath.conftest import small_config

HASH, ARRAY, PERCPU_ARRAY, LRU_HASH = 1, 2, 6, 9


def test_a_field_that_moved_is_carried_and_a_new_one_starts_at_zero():
    old = [
        "v",
        [["a", "unsigned int"], ["b", "unsigned short"], ["pad", "unsigned short"]],
        "struct",
    ]
    new = [
        "v",
        [
            ["a", "unsigned int"],
            ["c", "unsigned char"],
            ["pad", "unsigned char"],
            ["b", "unsigned short"],
        ],
        "struct",
    ]
    assert converter(old, new)(struct.pack("=IHH", 7, 9, 0xFFFF)) == struct.pack(
        "=IBBH", 7, 0, 0, 9
    )


def test_a_field_whose_type_changed_is_not_carried():
    old = ["v", [["a", "unsigned int"], ["b", "unsigned int"]], "struct"]
    new = ["v", [["a", "unsigned int"], ["b", "unsigned long long"]], "struct"]
    with pytest.raises(NotCarried, match="b changed"):
        converter(old, new)


def _without(desc: list, field: str) -> list:
    out = copy.deepcopy(desc)
    out[1] = [m for m in out[1] if m[0] != field]
    return out


def test_an_upgrade_carries_the_flows_and_settings_of_maps_whose_layout_changed(
    scratch_root, capfd
):
    cfg = small_config(scratch_root)
    loader.load(cfg)
    layout = read_layout(scratch_root)
    # As an older xlb laid them out: conntrack values without `stamp` (48 bytes, not 56), and
    # a config whose `fib_cache` byte was still padding.
    ct_old = _without(layout["xlb_ct"]["leaf"], "stamp")
    config_old = copy.deepcopy(layout["xlb_config"]["leaf"])
    config_old[1] = [m for m in config_old[1] if m[0] not in ("fib_cache", "local_redirect")]
    config_old[1].insert(-1, ["pad", "unsigned short"])
    os.unlink(os.path.join(scratch_root, "ct"))
    fd = map_create(LRU_HASH, 40, 48, cfg.ct_size, "xlb_ct")
    obj_pin(fd, os.path.join(scratch_root, "ct"))
    os.close(fd)
    old_ct = PinnedTable.open("xlb_ct", f"{scratch_root}/ct", layout["xlb_ct"]["key"], ct_old)
    for i in range(300):
        key = addr_bytes(f"198.18.1.{i % 250}") + addr_bytes("192.168.1.1")
        key += struct.pack("=HHB3x", 20000 + i, 80, 6)
        value = addr_bytes(f"198.18.1.{i % 250}") + addr_bytes("10.244.1.5")
        value += struct.pack("=HHHHII", 20000 + i, 8080, 0, 0, 1 + i % 7, 3)
        old_ct[old_ct.Key.from_buffer_copy(key)] = old_ct.Leaf.from_buffer_copy(value)
    old_ct.close()
    old_config = PinnedTable.open(
        "xlb_config", f"{scratch_root}/config", layout["xlb_config"]["key"], config_old
    )
    leaf = old_config.Leaf()
    ct.memmove(ct.addressof(leaf.node_addr4), addr_bytes("192.168.198.201"), 16)
    leaf.snat_port_min, leaf.snat_port_max, leaf.pad = 40000, 50000, 0xFFFF
    old_config[ct.c_uint32(0)] = leaf
    old_config.close()
    # and per-frontend counters whose `drops` were still called `dropped`: carried per CPU
    stats_old = copy.deepcopy(layout["xlb_stats"]["leaf"])
    for member in stats_old[1]:
        if member[0] == "drops":
            member[0] = "dropped"
    old_stats = PinnedTable.open(
        "xlb_stats", f"{scratch_root}/stats", layout["xlb_stats"]["key"], stats_old
    )
    cpus = len(old_stats[ct.c_uint32(5)])
    per_cpu = b"".join(struct.pack("=QQQQ", 10 + c, 1000, 2, 7) for c in range(cpus))
    old_stats.update_raw([struct.pack("=I", 5)], [per_cpu])
    old_stats.close()
    tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in layout.items()}
    tables["xlb_ct"] = ("ct", layout["xlb_ct"]["key"], ct_old)
    tables["xlb_config"] = ("config", layout["xlb_config"]["key"], config_old)
    tables["xlb_stats"] = ("stats", layout["xlb_stats"]["key"], stats_old)
    write_layout(scratch_root, tables)
    capfd.readouterr()

    loader.load(cfg)

    assert "carried the maps ct, stats, config over" in capfd.readouterr().err
    maps = Maps.open(scratch_root)
    flows = {bytes(k): v for k, v in maps.ct.items()}
    assert len(flows) == 300
    for i in range(300):
        key = addr_bytes(f"198.18.1.{i % 250}") + addr_bytes("192.168.1.1")
        v = flows[key + struct.pack("=HHB3x", 20000 + i, 80, 6)]
        assert (get_addr(v.nat_daddr), v.nat_dport, v.backend, v.svc, v.stamp) == (
            "10.244.1.5",
            8080,  # as written: the bytes are carried, not reinterpreted
            1 + i % 7,
            3,
            0,
        )
    counts = maps.svc_counts(5)
    assert counts == {
        "packets": sum(10 + c for c in range(cpus)),
        "bytes": 1000 * cpus,
        "new_flows": 2 * cpus,
        "drops": 0,  # renamed: not carried
    }
    config = maps.config[ct.c_uint32(0)]
    assert get_addr(config.node_addr4) == "192.168.198.201"
    assert (config.snat_port_min, config.snat_port_max, config.fib_cache) == (40000, 50000, 0)
    assert read_layout(scratch_root)["xlb_ct"]["leaf"] == layout["xlb_ct"]["leaf"]
    maps.close()
    assert not glob.glob(f"{scratch_root}_next_*")


def test_a_change_that_cannot_be_carried_leaves_everything_as_it_was(scratch_root):
    cfg = small_config(scratch_root)
    loader.load(cfg)
    layout = read_layout(scratch_root)
    config_old = copy.deepcopy(layout["xlb_config"]["leaf"])
    for member in config_old[1]:
        if member[0] == "ring_size":
            member[1] = "unsigned short"  # a field whose size changed
    config_old[1].insert(-1, ["pad2", "unsigned short"])
    tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in layout.items()}
    tables["xlb_config"] = ("config", layout["xlb_config"]["key"], config_old)
    write_layout(scratch_root, tables)
    with pytest.raises(DatapathError, match=r"map config .* cannot be carried over \(ring_size"):
        loader.load(cfg)
    assert read_layout(scratch_root)["xlb_config"]["leaf"] == config_old
    assert not glob.glob(f"{scratch_root}_next_*")


def test_an_upgrade_from_the_maglev_rings_carries_the_services_and_unpins_the_rings(
    scratch_root, capfd
):
    """From the xlb before per-group Maglev tables: service entries had `ring` and `ring_gen`
    and one flat `rings` array held every table. The entries are carried without them, the
    rings stay pinned only until the new programs are attached, and the tables come with the
    first sync (until then a Maglev frontend picks from its slots)."""
    cfg = small_config(scratch_root)
    loader.load(cfg)
    layout = read_layout(scratch_root)
    svc_old = copy.deepcopy(layout["xlb_services"]["leaf"])
    names = [m[0] for m in svc_old[1]]
    svc_old[1].insert(names.index("affinity_timeout"), ["ring", "unsigned int"])
    svc_old[1] = [m if m[0] != "pad1" else ["ring_gen", "unsigned char"] for m in svc_old[1]]
    key_desc = layout["xlb_services"]["key"]
    os.unlink(os.path.join(scratch_root, "services"))
    os.unlink(os.path.join(scratch_root, "maglev"))  # the old xlb had none
    fd = map_create(HASH, 24, 24, cfg.max_services, "xlb_services")
    obj_pin(fd, os.path.join(scratch_root, "services"))
    os.close(fd)
    fd = map_create(ARRAY, 4, 4, 2 * 2 * 251, "xlb_rings")
    obj_pin(fd, os.path.join(scratch_root, "rings"))
    os.close(fd)
    old = PinnedTable.open("xlb_services", f"{scratch_root}/services", key_desc, svc_old)
    key = addr_bytes("192.168.198.201") + struct.pack("=HBB4x", 0x901F, 6, 1)
    # id 5, group 2, ring 1, affinity 30, count 3, algorithm 1 (Maglev), ring_gen 1, flags 4
    old[old.Key.from_buffer_copy(key)] = old.Leaf.from_buffer_copy(
        struct.pack("=IIIIHBBHH", 5, 2, 1, 30, 3, 1, 1, 4, 0)
    )
    old.close()
    tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in layout.items() if n != "xlb_maglev"}
    tables["xlb_services"] = ("services", key_desc, svc_old)
    tables["xlb_rings"] = ("rings", '"unsigned int"', '"unsigned int"')
    write_layout(scratch_root, tables)
    capfd.readouterr()

    loader.load(cfg)

    assert "carried the maps services over" in capfd.readouterr().err
    assert not os.path.exists(os.path.join(scratch_root, "rings"))
    maps = Maps.open(scratch_root)
    (entry,) = maps.read_services().values()
    assert (entry.id, entry.group, entry.affinity_timeout, entry.count) == (5, 2, 30, 3)
    assert (entry.algorithm, entry.flags) == (1, 4)
    assert maps.maglev.installed() == {}  # the first sync builds them
    assert "xlb_rings" not in read_layout(scratch_root)
    maps.close()
    assert not glob.glob(f"{scratch_root}_next_*")


def test_a_constant_sized_map_that_grew_is_carried_into_its_new_size(scratch_root, capfd):
    """The drop reasons grow when a reason is added: bcc would reuse the smaller pinned array
    as it is (the new reasons uncounted, their reads out of range). The loader carries the
    counts into an array of the new size."""
    cfg = small_config(scratch_root)
    loader.load(cfg)
    layout = read_layout(scratch_root)
    os.unlink(os.path.join(scratch_root, "reasons"))
    fd = map_create(PERCPU_ARRAY, 4, 8, 20, "xlb_reasons")
    obj_pin(fd, os.path.join(scratch_root, "reasons"))
    os.close(fd)
    old = PinnedTable.open(
        "xlb_reasons", f"{scratch_root}/reasons", layout["xlb_reasons"]["key"],
        layout["xlb_reasons"]["leaf"],
    )  # fmt: skip
    cpus = len(old[ct.c_uint32(0)])
    old.update_raw([struct.pack("=I", 7)], [struct.pack("=Q", 5) * cpus])
    old.close()
    maps = Maps.open(scratch_root)
    assert maps.reasons.max_entries == 20
    assert maps.reason_counts()["pass_no_service"] == 5 * cpus  # the rest read as 0
    maps.close()
    capfd.readouterr()

    loader.load(cfg)

    assert "carried the maps reasons over" in capfd.readouterr().err
    maps = Maps.open(scratch_root)
    assert maps.reasons.max_entries == len(maps.reason_counts()) > 20
    assert maps.reason_counts()["pass_no_service"] == 5 * cpus
    maps.close()
