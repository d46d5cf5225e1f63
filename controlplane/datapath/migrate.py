"""Carrying the pinned maps across an xlb upgrade whose maps.h changed a layout.

A pinned map outlives the programs (that is how flows survive an agent's restart), so a new
xlb meets maps laid out by the old maps.h, and bcc would open them as they are. Instead the
loader first compiles maps.h alone into a scratch directory beside the pins (maps of the new
layout, at the sizes the pins have), copies every entry of each changed map into its new
twin field by field, by name, swaps the pins, and only then compiles and attaches the
programs; after the switch it copies once more what the old programs added meanwhile (new
flows) and lets the old maps go. A field the old layout lacked starts at zero, padding is
not carried; per-CPU counters are carried CPU by CPU (what they count during the switch, a
few seconds, is lost). A change no name can carry (a field whose type or size changed) is
refused before anything is touched. A map the new maps.h no longer has (the Maglev rings of
before the per-group tables) stays pinned while the old programs use it, and is unpinned once
the new ones are attached.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import glob
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import SIZE_FIELDS, DatapathConfig
from .pinned import LayoutError, PinnedTable, decode, read_layout, write_layout
from .programs import DatapathError, compile_source, layout_of

Convert = Callable[[bytes], bytes]


class NotCarried(ValueError):
    """A layout change that no copy by field name can carry."""


def _shape(t: Any) -> Any:
    """A ctypes type's layout, comparable: names, offsets, sizes and kinds, down."""
    if hasattr(t, "_fields_"):
        kind = "union" if issubclass(t, ct.Union) else "struct"
        return (kind, tuple((n, getattr(t, n).offset, _shape(ft)) for n, ft, *_ in t._fields_))
    if hasattr(t, "_length_"):
        return ("array", t._length_, _shape(t._type_))
    return ("scalar", t.__name__, ct.sizeof(t))


def _plan(old: Any, new: Any, at_old: int, at_new: int, path: str, copies: list) -> None:
    """Appends (old offset, new offset, length) for what carries old's value into new."""
    if _shape(old) == _shape(new):
        copies.append((at_old, at_new, ct.sizeof(new)))
        return
    if not (hasattr(old, "_fields_") and hasattr(new, "_fields_")) or issubclass(new, ct.Union):
        raise NotCarried(f"{path or 'the whole value'} changed from {_shape(old)} to {_shape(new)}")
    olds = {n: (getattr(old, n).offset, ft) for n, ft, *_ in old._fields_}
    for name, ftype, *_ in new._fields_:
        if name.startswith(("pad", "__pad")) or name not in olds:
            continue  # padding, or a field the old layout lacked: zero
        offset, old_type = olds[name]
        where = f"{path}.{name}" if path else name
        _plan(old_type, ftype, at_old + offset, at_new + getattr(new, name).offset, where, copies)


def converter(old_desc: Any, new_desc: Any) -> Convert:
    """A function from a value laid out by old_desc to the same value laid out by new_desc
    (bcc's type descriptions), field by field by name; NotCarried if there is none."""
    old, new = decode(old_desc), decode(new_desc)
    copies: list[tuple[int, int, int]] = []
    _plan(old, new, 0, 0, "", copies)
    size = ct.sizeof(new)
    if copies == [(0, 0, size)] and ct.sizeof(old) == size:
        return bytes

    def convert(raw: bytes) -> bytes:
        out = bytearray(size)
        for at_old, at_new, length in copies:
            out[at_new : at_new + length] = raw[at_old : at_old + length]
        return bytes(out)

    return convert


def _copy(old: PinnedTable, new: PinnedTable, key: Convert, leaf: Convert, only_new: bool) -> int:
    """Writes old's entries, converted, into new (only_new: those new does not hold yet);
    a per-CPU map's values are converted CPU by CPU. The count written."""
    keys: list[bytes] = []
    values: list[bytes] = []
    n, old_size = 0, ct.sizeof(old.Leaf)
    for raw_key, raw_value in old.raw_items():
        new_key = key(raw_key)
        if new.is_array and int.from_bytes(new_key[:4], "little") >= new.max_entries:
            continue  # an array made smaller: what no longer fits is not carried
        if only_new and new.Key.from_buffer_copy(new_key) in new:
            continue
        if old.percpu:
            value = b"".join(
                leaf(raw_value[at : at + old_size]).ljust(new.stride, b"\0")
                for at in range(0, len(raw_value), old.stride)
            )
        else:
            value = leaf(raw_value)
        keys.append(new_key)
        values.append(value)
        n += 1
        if len(keys) >= 4096:
            new.update_raw(keys, values)
            keys, values = [], []
    if keys:
        new.update_raw(keys, values)
    return n


@dataclass
class Migration:
    """Changed maps whose new twins now hold the pins; the old ones wait in the scratch
    directory until the new programs are attached."""

    root: str
    scratch: str
    old_layout: dict[str, Any]
    moved: dict[str, tuple[str, PinnedTable, PinnedTable, Convert, Convert]]
    dropped: list[str] = dataclasses.field(default_factory=list)  # pins of maps gone from maps.h

    def finish(self) -> int:
        """After the new programs are attached: copies what the old ones added meanwhile,
        then lets the old maps go (the last program holding them is gone). The count."""
        carried = 0
        try:
            for _, old, new, key, leaf in self.moved.values():
                if not new.is_array:  # arrays were copied whole (counters too)
                    carried += _copy(old, new, key, leaf, only_new=True)
        finally:
            self._close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            for pin in self.dropped:  # no program of this xlb reads it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.root, pin))
        return carried

    def abort(self) -> None:
        """Puts the old maps and layout back (the new programs failed to load or attach)."""
        for pin, *_ in self.moved.values():
            here, old = os.path.join(self.root, pin), os.path.join(self.scratch, f"{pin}_old")
            os.replace(here, os.path.join(self.scratch, f"{pin}_new"))
            os.replace(old, here)
        tables = {n: (e["pin"], e["key"], e["leaf"]) for n, e in self.old_layout.items()}
        write_layout(self.root, tables)
        self._close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _close(self) -> None:
        for _, old, new, _, _ in self.moved.values():
            old.close()
            new.close()


def _pinned_sizes(cfg: DatapathConfig, root: str) -> DatapathConfig:
    from .syscall import pinned_map_info

    sizes = {}
    for pin, name in SIZE_FIELDS.items():
        with contextlib.suppress(FileNotFoundError):  # a map this version adds
            sizes[name] = pinned_map_info(os.path.join(cfg.pin_root, pin)).max_entries
    return dataclasses.replace(cfg, pin_root=root, **sizes)


def remove_scratch(pin_root: str) -> None:
    """Removes the scratch directories of loaders beside pin_root (and so the old maps they
    hold, once no program uses them)."""
    for path in glob.glob(f"{pin_root.rstrip('/')}_next_*"):
        shutil.rmtree(path, ignore_errors=True)


def prepare(cfg: DatapathConfig) -> Migration | None:
    """Before the programs are compiled: carries every pinned map whose layout this xlb's
    maps.h changed into a map of the new layout, now pinned in its place. None when no map
    changed (or none is pinned). Raises DatapathError, touching nothing, when one cannot be
    carried."""
    try:
        old_layout = read_layout(cfg.pin_root)
    except LayoutError:
        return None  # nothing pinned (or pinned before layouts were: record_layout checks)
    root = cfg.pin_root.rstrip("/")
    remove_scratch(root)  # what a loader killed half-way left
    scratch = f"{root}_next_{os.getpid()}"  # beside the pins: the same bpffs, renames work
    program = compile_source("maps.c", scratch, _pinned_sizes(cfg, scratch).cflags())
    try:
        new_layout = layout_of(program)
    finally:
        program.cleanup()  # the scratch maps stay, pinned
    changed = {
        name: entry
        for name, entry in new_layout.items()
        if name in old_layout
        and (old_layout[name]["key"], old_layout[name]["leaf"]) != (entry[1], entry[2])
    }
    from .syscall import pinned_map_info

    # a map maps.h sizes by a constant that changed (the drop reasons, when one is added):
    # bcc would open the old one as it is, and the new entries would go uncounted
    sizes = set(SIZE_FIELDS)
    changed |= {
        name: entry
        for name, entry in new_layout.items()
        if name in old_layout
        and entry[0] not in sizes
        and os.path.exists(os.path.join(root, entry[0]))
        and pinned_map_info(os.path.join(root, entry[0])).max_entries != entry[3].max_entries
    }
    dropped = [e["pin"] for name, e in old_layout.items() if name not in new_layout]
    if not changed and not dropped:
        shutil.rmtree(scratch, ignore_errors=True)
        return None
    plans = {}
    try:
        for name, (pin, key, leaf, _) in changed.items():
            before = old_layout[name]
            try:
                plans[name] = (converter(before["key"], key), converter(before["leaf"], leaf))
            except NotCarried as exc:
                raise DatapathError(
                    f"xlb: the map {pin} pinned under {root} was laid out by another xlb, "
                    f"and its entries cannot be carried over ({exc}); the running datapath "
                    "is left as it is. To switch: `xlb datapath down` (it drops tracked "
                    "flows), then load again"
                ) from None
        moved = {}
        for name, (pin, key, leaf, _) in changed.items():
            before = old_layout[name]
            old = PinnedTable.open(name, os.path.join(root, pin), before["key"], before["leaf"])
            new = PinnedTable.open(name, os.path.join(scratch, pin), key, leaf)
            moved[name] = (pin, old, new, *plans[name])
            _copy(old, new, *plans[name], only_new=False)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for pin, *_ in moved.values():  # the swap: renames within one bpffs
        os.replace(os.path.join(root, pin), os.path.join(scratch, f"{pin}_old"))
        os.replace(os.path.join(scratch, pin), os.path.join(root, pin))
    write_layout(root, {name: (e[0], e[1], e[2]) for name, e in new_layout.items()})
    return Migration(root, scratch, old_layout, moved, dropped)
