"""The pinned maps opened without bcc: the same types bcc generates, the same entries, clear
errors when the pins and their layout disagree, and a loader whose caller never maps LLVM."""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import sys
import textwrap

import pytest

from controlplane.datapath.pinned import (
    LayoutError,
    PinnedTable,
    open_tables,
    possible_cpus,
    read_layout,
    write_layout,
)
from controlplane.datapath.programs import DatapathError, pinned_maps
from controlplane.datapath.syscall import map_create, obj_pin
from tests.datapath.conftest import small_config
from tests.helpers import REPO


def _fields(ctype) -> list[tuple]:
    """A ctypes type's shape: (name, offset, size, nested shape) for every field, down."""
    if not hasattr(ctype, "_fields_"):
        return [(None, 0, ct.sizeof(ctype), ())]
    out = []
    for name, *_ in ctype._fields_:
        f = getattr(ctype, name)
        sub = dict(ctype._fields_)[name]
        out.append(
            (name, f.offset, f.size, tuple(_fields(sub)) if hasattr(sub, "_fields_") else ())
        )
    return out


def test_every_pinned_map_has_the_types_bcc_generated(xdp, maps):
    assert set(maps.tables) == set(pinned_maps())
    for name, table in maps.tables.items():
        theirs = xdp.table(name)
        assert _fields(table.Key) == _fields(theirs.Key), name
        # bcc types a per-CPU map's Leaf as an array of one value per CPU
        leaf = theirs.Leaf._type_ if table.percpu else theirs.Leaf
        assert _fields(table.Leaf) == _fields(leaf), name
        assert table.max_entries == theirs.max_entries, name


def test_entries_read_back_as_bcc_reads_them(xdp, maps, syncer):
    from tests.datapath.test_sync import NODE4, NODE6, web

    syncer.sync(web(), NODE4, NODE6)
    theirs = {bytes(k): bytes(v) for k, v in xdp.table("xlb_services").items()}
    ours = {bytes(k): bytes(v) for k, v in maps.services.items()}
    assert ours == theirs and ours
    batch = {bytes(k): bytes(v) for k, v in maps.services.items_lookup_batch(chunk=2)}
    assert batch == ours  # across several chunks
    reasons = maps.reasons[ct.c_uint32(0)]
    assert len(reasons) == possible_cpus() and all(isinstance(n, int) for n in reasons)


def test_no_layout_names_the_pin_root(scratch_root):
    with pytest.raises(LayoutError, match=f"no xlb maps pinned under {scratch_root}"):
        open_tables(scratch_root)


def test_a_pin_that_does_not_match_its_layout_is_refused(scratch_root):
    fd = map_create(2, 4, 8, 4, "xlb_scratch")  # an array of 8-byte values
    obj_pin(fd, os.path.join(scratch_root, "scratch"))
    os.close(fd)
    write_layout(scratch_root, {"xlb_scratch": ("scratch", "unsigned int", "unsigned int")})
    assert read_layout(scratch_root)["xlb_scratch"]["pin"] == "scratch"
    with pytest.raises(LayoutError, match="8-byte values, the layout says 4"):
        open_tables(scratch_root)
    write_layout(scratch_root, {"xlb_scratch": ("scratch", "unsigned int", "unsigned long long")})
    (table,) = open_tables(scratch_root).values()
    table[ct.c_uint32(3)] = ct.c_uint64(7)
    assert [(k.value, v.value) for k, v in table.items_lookup_batch() if v.value] == [(3, 7)]
    assert isinstance(table, PinnedTable) and len(table) == 4
    write_layout(scratch_root, {"xlb_scratch": ("gone", "unsigned int", "unsigned long long")})
    with pytest.raises(LayoutError, match="gone, which is not pinned"):
        open_tables(scratch_root)


def test_the_loader_compiles_in_a_child_and_its_caller_never_imports_bcc(scratch_root):
    script = textwrap.dedent(f"""
        import sys
        from controlplane.datapath import loader
        from controlplane.datapath.config import DatapathConfig
        from controlplane.datapath.maps import Maps
        cfg = DatapathConfig(pin_root={scratch_root!r}, max_services=256, max_backends=256,
                             max_slots=1024, ct_size=1024, affinity_size=256,
                             max_source_ranges=16)
        loader.load(cfg)
        maps = Maps.open(cfg.pin_root)
        print(maps.ct.max_entries, "bcc" in sys.modules)
        libs = open("/proc/self/maps").read()
        print("libbcc" in libs or "libLLVM" in libs)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.split() == ["1024", "False", "False"], out.stderr


def test_a_loader_that_fails_says_why_in_the_callers_error(scratch_root):
    from controlplane.datapath import loader

    with pytest.raises(DatapathError, match="xlb-no-such-if"):
        loader.load(small_config(scratch_root), "xlb-no-such-if", "/sys/fs/cgroup")


def test_a_size_the_pins_do_not_have_is_said_and_a_ring_size_needs_no_reload(scratch_root, capfd):
    import dataclasses

    from controlplane.datapath import loader

    cfg = small_config(scratch_root)
    loader.load(cfg)
    assert "warning" not in capfd.readouterr().err
    loader.load(dataclasses.replace(cfg, ct_size=2048))
    assert "the pinned map ct keeps its 1024 entries, not 2048" in capfd.readouterr().err
    # Maglev tables are sized as they are built: another --ring-size needs no `down`
    loader.load(dataclasses.replace(cfg, ring_size=1021))
    assert "warning" not in capfd.readouterr().err.replace("keeps its 1024", "")


def test_maps_pinned_by_an_xlb_with_another_layout_are_refused_before_loading(scratch_root):
    from controlplane.datapath.programs import compile_program

    # a heartbeat map of another size, as an older maps.h might have pinned it
    fd = map_create(2, 4, 16, 1, "xlb_heartbeat")
    obj_pin(fd, os.path.join(scratch_root, "heartbeat"))
    os.close(fd)
    with pytest.raises(DatapathError, match=r"map heartbeat .* \(4/16-byte key/value, now 4/8\)"):
        compile_program("tc_lb.c", small_config(scratch_root))


def test_a_struct_that_changed_at_the_same_size_is_refused_too(scratch_root):
    from controlplane.datapath.programs import compile_program

    program = compile_program("tc_lb.c", small_config(scratch_root))
    program.cleanup()
    layout = read_layout(scratch_root)
    leaf = layout["xlb_config"]["leaf"]
    leaf[1][0][0] = "renamed"  # as if maps.h had moved a field
    tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in layout.items()}
    write_layout(scratch_root, tables)
    with pytest.raises(DatapathError, match=r"map config .* \(its key or value struct changed\)"):
        compile_program("tc_lb.c", small_config(scratch_root))
