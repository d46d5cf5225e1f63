"""The pinned maps without bcc: a table is a file descriptor from BPF_OBJ_GET and the key and
value types bcc generated from maps.h, kept as bcc's own JSON descriptions in one more pinned
map beside the others (`layout`: bpffs holds no regular files, and whoever can open the maps
can then read how they are laid out, from any container that mounts the pins).

Why: importing bcc maps LLVM and clang into the process (about 60 MB resident before a single
compile, 100 MB after). The agent compiles its programs in a short-lived child
(datapath/loader.py) and then needs only the maps, so it never imports bcc at all. The
tables here offer the part of bcc's table API that xlb uses, so code and tests read the same.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import json
import os
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from .programs import DatapathError
from .syscall import (
    MAP_DELETE,
    MAP_LOOKUP,
    MAP_LOOKUP_BATCH,
    MAP_NEXT_KEY,
    MAP_UPDATE,
    MAP_UPDATE_BATCH,
    MapInfo,
    map_batch,
    map_create,
    map_elem,
    map_info,
    obj_get,
    obj_pin,
)

LAYOUT_PIN = "layout"  # an array of one entry: zlib-compressed JSON

# bcc's names for C scalar types (bcc/__init__.py's str2ctype).
_SCALARS: dict[str, Any] = {
    "_Bool": ct.c_bool,
    "char": ct.c_char,
    "signed char": ct.c_byte,
    "unsigned char": ct.c_ubyte,
    "short": ct.c_short,
    "unsigned short": ct.c_ushort,
    "int": ct.c_int,
    "unsigned int": ct.c_uint,
    "long": ct.c_long,
    "unsigned long": ct.c_ulong,
    "long long": ct.c_longlong,
    "unsigned long long": ct.c_ulonglong,
    "__int128": ct.c_int64 * 2,
    "unsigned __int128": ct.c_uint64 * 2,
}

# The map types that need telling apart.
_HASH, _ARRAY, _PERCPU_HASH, _PERCPU_ARRAY, _LRU_HASH, _LRU_PERCPU_HASH = 1, 2, 5, 6, 9, 10
_PERCPU = {_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH}
_ARRAYS = {_ARRAY, _PERCPU_ARRAY}
_BATCHES = {_HASH, _ARRAY, _PERCPU_HASH, _PERCPU_ARRAY, _LRU_HASH, _LRU_PERCPU_HASH}


class LayoutError(DatapathError):
    """The layout pin is missing or does not describe the pinned maps; one line for the user."""


def decode(desc: Any) -> Any:
    """The ctypes type for one of bcc's type descriptions (what bpf_table_key_desc returns):
    a scalar's name, or [name, fields, "struct"|"struct_packed"|"union"], decoded by the
    same rules bcc uses so the two agree byte for byte."""
    if isinstance(desc, str):
        try:
            return _SCALARS[desc]
        except KeyError:
            raise LayoutError(f"xlb: unknown C type {desc!r} in the pinned layout") from None
    name, members, *kind = desc
    fields: list[tuple] = []
    anonymous: list[str] = []
    for member in members:
        if len(member) == 2:
            fields.append((member[0], decode(member[1])))
        elif isinstance(member[2], list):  # an array: [name, type, [n]]
            fields.append((member[0], decode(member[1]) * member[2][0]))
        elif isinstance(member[2], int):  # a bit field
            fields.append((member[0], decode(member[1]), member[2]))
        else:  # a nested struct or union, maybe anonymous
            field_name = member[0] or f"__anon{len(anonymous)}"
            if not member[0]:
                anonymous.append(field_name)
            fields.append((field_name, decode(member)))
    kind = kind[0] if kind else "struct"
    base = ct.Union if kind == "union" else ct.Structure
    body: dict[str, Any] = {"_anonymous_": anonymous, "_fields_": fields}
    if kind == "struct_packed":
        body["_pack_"] = 1
    return type(str(name), (base,), body)


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key: the kernel's possible CPUs, not online."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class PinnedTable:
    """One pinned map: Key and Leaf are ctypes types; per-CPU maps read as a list per key."""

    def __init__(self, name: str, fd: int, info: MapInfo, key: Any, leaf: Any) -> None:
        self.name, self.fd = name, -1  # owned only once the layout checked out
        self.map_type, self.max_entries = info.type, info.max_entries
        self.Key, self.Leaf = key, leaf
        self.percpu = info.type in _PERCPU
        self.is_array = info.type in _ARRAYS  # every key exists; entries cannot be deleted
        if self.percpu:  # the kernel lays each CPU's value out at 8-byte alignment
            stride = (ct.sizeof(leaf) + 7) & ~7
            self._value_size = stride * possible_cpus()
        else:
            stride = self._value_size = ct.sizeof(leaf)
        self.stride = stride  # bytes from one CPU's value to the next (per-CPU maps)
        if (ct.sizeof(key), ct.sizeof(leaf)) != (info.key_size, info.value_size):
            raise LayoutError(
                f"xlb: pinned map {name} holds {info.key_size}-byte keys and "
                f"{info.value_size}-byte values, the layout says {ct.sizeof(key)} and "
                f"{ct.sizeof(leaf)}: the pins are from another xlb; reload the datapath"
            )
        self.fd = fd

    @classmethod
    def open(cls, name: str, path: str, key_desc: Any, leaf_desc: Any) -> PinnedTable:
        fd = obj_get(path)
        try:
            return cls(name, fd, map_info(fd), decode(key_desc), decode(leaf_desc))
        except Exception:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()

    # -- one entry -------------------------------------------------------------------------------

    def _elem(self, cmd: int, key: Any, value: Any = None) -> bool:
        """One map command on key (and value, ctypes objects): False on ENOENT."""
        return map_elem(
            cmd, self.fd, ct.addressof(key), ct.addressof(value) if value is not None else 0
        )

    def _unpack(self, raw: Any) -> Any:
        """A value buffer as the caller reads it: the Leaf, or a list of one per CPU (plain
        numbers for a scalar Leaf, as bcc gives them)."""
        if not self.percpu:
            return raw
        values = [self.Leaf.from_buffer_copy(raw, i * self.stride) for i in range(possible_cpus())]
        return [getattr(v, "value", v) for v in values]

    def lookup(self, key: Any) -> Any | None:
        raw = ct.create_string_buffer(self._value_size)
        if not self._elem(MAP_LOOKUP, key, raw):
            return None
        leaf = raw if self.percpu else self.Leaf.from_buffer_copy(raw)
        return self._unpack(leaf)

    def __getitem__(self, key: Any) -> Any:
        found = self.lookup(key)
        if found is None:
            raise KeyError(key)
        return found

    def __setitem__(self, key: Any, leaf: Any) -> None:
        if self.percpu:
            raise TypeError(f"{self.name}: per-CPU values are written by the datapath only")
        self._elem(MAP_UPDATE, key, leaf)

    def __delitem__(self, key: Any) -> None:
        if self.map_type in _ARRAYS:  # array slots cannot be deleted: zero them
            zero = ct.create_string_buffer(self._value_size)
            self._elem(MAP_UPDATE, key, zero)
            return
        if not self._elem(MAP_DELETE, key):
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return self.lookup(key) is not None

    # -- all entries -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        """Every key, by BPF_MAP_GET_NEXT_KEY (a key deleted meanwhile restarts the walk at
        the kernel's choice: a concurrent writer can make a key appear twice, never vanish)."""
        if self.map_type in _ARRAYS:
            for i in range(self.max_entries):
                yield self.Key(i)
            return
        key, first = self.Key(), True
        while True:
            nxt = self.Key()
            if not map_elem(
                MAP_NEXT_KEY, self.fd, 0 if first else ct.addressof(key), ct.addressof(nxt)
            ):
                return
            yield nxt
            key, first = nxt, False

    def __len__(self) -> int:
        """Entries held (an array always holds max_entries, as in bcc)."""
        return sum(1 for _ in self)

    def items(self) -> list[tuple[Any, Any]]:
        """Every (key, value), as a list (as bcc gives them): in batches where the map type
        has them (a restarted agent reads 100,000 slots), else key by key."""
        if self.map_type in _BATCHES:
            return list(self.items_lookup_batch())
        found = ((key, self.lookup(key)) for key in self)
        return [(key, leaf) for key, leaf in found if leaf is not None]

    def clear(self) -> None:
        for key in list(self):
            with contextlib.suppress(KeyError):  # gone meanwhile (an LRU evicted it)
                del self[key]

    # -- in batches --------------------------------------------------------------------------------

    def items_lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """Every entry, chunk at a time by BPF_MAP_LOOKUP_BATCH (one syscall per chunk)."""
        size, key_size = self._value_size, ct.sizeof(self.Key)
        for key_bytes, value_bytes, n in self._raw_chunks(chunk):
            for i in range(n):
                if self.percpu:
                    value = self._unpack(value_bytes[i * size : (i + 1) * size])
                else:
                    value = self.Leaf.from_buffer_copy(value_bytes, i * size)
                yield self.Key.from_buffer_copy(key_bytes, i * key_size), value

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry as the kernel holds it: key bytes, value bytes (per-CPU maps: every
        CPU's value, each at 8-byte alignment)."""
        size, key_size = self._value_size, ct.sizeof(self.Key)
        for key_bytes, value_bytes, n in self._raw_chunks(4096):
            for i in range(n):
                yield (
                    key_bytes[i * key_size : (i + 1) * key_size],
                    value_bytes[i * size : (i + 1) * size],
                )

    def update_raw(self, keys: list[bytes], values: list[bytes]) -> None:
        """Writes entries given as the kernel holds them (see raw_items): in one
        BPF_MAP_UPDATE_BATCH where the map type has it, else one by one."""
        key_size = ct.sizeof(self.Key)
        if any(len(k) != key_size for k in keys) or any(len(v) != self._value_size for v in values):
            raise ValueError(f"{self.name}: entries of another size than the map's")
        if self.map_type in _BATCHES and len(keys) > 1:
            k = ct.create_string_buffer(b"".join(keys), key_size * len(keys))
            v = ct.create_string_buffer(b"".join(values), self._value_size * len(values))
            self._update_batch(ct.addressof(k), ct.addressof(v), len(keys))
            return
        for key, value in zip(keys, values, strict=True):
            k = ct.create_string_buffer(key, key_size)
            v = ct.create_string_buffer(value, self._value_size)
            map_elem(MAP_UPDATE, self.fd, ct.addressof(k), ct.addressof(v))

    def _raw_chunks(self, chunk: int) -> Iterator[tuple[bytes, bytes, int]]:
        """(key bytes, value bytes, count) a chunk at a time: by BPF_MAP_LOOKUP_BATCH where
        the map type has it (plain bytes: a ctypes array's buffer is slow to take apart),
        else key by key."""
        key_size = ct.sizeof(self.Key)
        if self.map_type not in _BATCHES:
            for key in self:
                raw = ct.create_string_buffer(self._value_size)
                if self._elem(MAP_LOOKUP, key, raw):  # else deleted meanwhile
                    yield ct.string_at(ct.addressof(key), key_size), raw.raw, 1
            return
        keys = (self.Key * chunk)()
        raw = ct.create_string_buffer(self._value_size * chunk)
        token_in, token_out = self.Key(), self.Key()
        first = True
        while True:
            n, done = map_batch(
                MAP_LOOKUP_BATCH,
                self.fd,
                ct.addressof(keys),
                ct.addressof(raw),
                chunk,
                in_batch=0 if first else ct.addressof(token_in),
                out_batch=ct.addressof(token_out),
            )
            yield ct.string_at(keys, n * key_size), raw.raw[: n * self._value_size], n
            if done:
                return
            ct.memmove(ct.addressof(token_in), ct.addressof(token_out), key_size)
            first = False

    def items_update_batch(self, keys: Any, leaves: Any) -> None:
        """Writes len(keys) entries (ctypes arrays of Key and Leaf) in one BPF_MAP_UPDATE_BATCH."""
        if len(keys) != len(leaves):
            raise ValueError(f"{self.name}: {len(keys)} keys but {len(leaves)} values")
        self._update_batch(ct.addressof(keys), ct.addressof(leaves), len(keys))

    def _update_batch(self, keys: int, values: int, count: int) -> None:
        written, _ = map_batch(MAP_UPDATE_BATCH, self.fd, keys, values, count)
        if written != count:
            raise OSError(errno.EIO, f"{self.name}: batch wrote {written} of {count}")


def write_layout(pin_root: str, tables: dict[str, tuple[str, Any, Any]]) -> None:
    """Records, beside the pins, each pinned map's file and bcc's descriptions of its key and
    value (name -> (pin file, key desc, value desc)): a new one-entry map, pinned under a
    temporary name and renamed over the last one, so a reader never sees half of it."""
    text = json.dumps(
        {name: {"pin": pin, "key": k, "leaf": v} for name, (pin, k, v) in sorted(tables.items())}
    )
    blob = zlib.compress(text.encode())
    fd = map_create(_ARRAY, 4, len(blob), 1, "xlb_layout")
    try:
        value = ct.create_string_buffer(blob, len(blob))
        key = ct.c_uint32(0)
        map_elem(MAP_UPDATE, fd, ct.addressof(key), ct.addressof(value))
        tmp = os.path.join(pin_root, f"{LAYOUT_PIN}_{os.getpid()}")  # bpffs refuses dots
        obj_pin(fd, tmp)
        os.replace(tmp, os.path.join(pin_root, LAYOUT_PIN))
    finally:
        os.close(fd)


def read_layout(pin_root: str) -> dict[str, Any]:
    """What write_layout recorded under pin_root."""
    path = os.path.join(pin_root, LAYOUT_PIN)
    try:
        fd = obj_get(path)
    except FileNotFoundError:
        raise LayoutError(
            f"xlb: no xlb maps pinned under {pin_root} (no {LAYOUT_PIN}); is the datapath "
            "loaded on this node (xlb datapath up, or the agent), or is it another --pin-root?"
        ) from None
    try:
        value = ct.create_string_buffer(map_info(fd).value_size)
        key = ct.c_uint32(0)
        if not map_elem(MAP_LOOKUP, fd, ct.addressof(key), ct.addressof(value)):
            raise ValueError("its one entry is missing")
        return json.loads(zlib.decompress(value.raw))
    except (OSError, ValueError, zlib.error) as exc:
        raise LayoutError(f"xlb: {path} cannot be read ({exc}); reload the datapath") from None
    finally:
        os.close(fd)


def open_tables(pin_root: str) -> dict[str, PinnedTable]:
    """Every map the layout under pin_root describes, opened from its pin."""
    tables: dict[str, PinnedTable] = {}
    try:
        for name, entry in read_layout(pin_root).items():
            pin = os.path.join(pin_root, entry["pin"])
            try:
                tables[name] = PinnedTable.open(name, pin, entry["key"], entry["leaf"])
            except FileNotFoundError:
                raise LayoutError(
                    f"xlb: the layout names {pin}, which is not pinned; reload the datapath"
                ) from None
    except BaseException:
        for table in tables.values():
            table.close()
        raise
    return tables
