"""Compiling, loading, attaching and pinning the BPF programs in bpf/.

bcc rewrites map operations only in the main source file, so headers under bpf/lib are
inlined here, each behind a #line marker so that compiler errors still name the real file
and line. Every program pins its maps under the same root: a program loaded later, or by a
restarted agent, opens the same maps and traffic never stops.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..heap import release_memory
from . import import_bcc
from .config import DatapathConfig

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# maps.h's pinned maps: BPF_TABLE_PINNED("type", key, value, NAME, size, XLB_PIN_ROOT "/FILE"...
_PINNED = re.compile(
    r'BPF_TABLE_PINNED\(\s*"[\w$]+",\s*[^,]+,\s*[^,]+,\s*(\w+),[^;]*?XLB_PIN_ROOT\s*"/(\w+)"', re.S
)


class DatapathError(RuntimeError):
    """A problem with the host or the programs that the user must act on; one line."""


def expand(path: Path, seen: set[Path] | None = None) -> str:
    """The source of path with its quoted includes inlined once each, with #line markers."""
    seen = set() if seen is None else seen
    path = path.resolve()
    out = [f'#line 1 "{path.relative_to(BPF_DIR.parent)}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        inc = (path.parent / m.group(1)).resolve()
        if inc not in seen:
            seen.add(inc)
            out.append(expand(inc, seen))
        out.append(f'#line {lineno + 1} "{path.relative_to(BPF_DIR.parent)}"')
    return "\n".join(out)


def ensure_bpffs(pin_root: str) -> None:
    """Mount bpffs at /sys/fs/bpf if it is not (hosts differ), and create the pin root."""
    mount = "/sys/fs/bpf"
    if pin_root.startswith(mount + "/") and not os.path.ismount(mount):
        subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True)
    os.makedirs(pin_root, exist_ok=True)


def tails_of(text: str, entry: str) -> dict[str, int]:
    """The tail programs of entry in a program's source (bpf/lib/tail.h's rule: the function
    <entry>__<name> at index XLB_TAIL_<NAME> of xlb_tail_<entry>): function name -> index."""
    from .constants import value

    names = re.findall(rf"^int ({re.escape(entry)}__(\w+))\(", text, re.M)
    return {fn: value(f"XLB_TAIL_{tail.upper()}") for fn, tail in names}


@dataclass
class Program:
    """One compiled entry program (a bcc BPF object) and the functions loaded from it."""

    name: str
    bpf: Any
    pin_root: str
    functions: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def function(self, name: str, prog_type: int, **kw: Any) -> Any:
        """The loaded entry program name, with its tail programs (if it has any) loaded and
        in its pinned prog array first: from its first packet on, it can call them."""
        if name not in self.functions:
            tails = tails_of(self.text, name)
            if tails:
                import ctypes

                array = self.bpf[f"xlb_tail_{name}".encode()]
                for fn, index in tails.items():
                    loaded = self.bpf.load_func(fn.encode(), prog_type, **kw)
                    self.functions[fn] = loaded
                    array[ctypes.c_int(index)] = ctypes.c_int(loaded.fd)
            self.functions[name] = self.bpf.load_func(name.encode(), prog_type, **kw)
        return self.functions[name]

    def table(self, name: str) -> Any:
        return self.bpf[name.encode()]

    def cleanup(self) -> None:
        self.bpf.cleanup()


def compile_source(source: str, pin_root: str, cflags: list[str], debug: int = 0) -> Program:
    """Compiles bpf/<source> with these flags (its maps pinned under pin_root), nothing more."""
    bcc = import_bcc()
    ensure_bpffs(pin_root)
    text = expand(BPF_DIR / source)
    try:
        bpf = bcc.BPF(text=text.encode(), cflags=cflags + ["-Wno-unused-function"], debug=debug)
    except Exception as exc:  # bcc raises plain Exception for compile and map errors
        raise DatapathError(f"xlb: cannot load bpf/{source}: {exc}") from None
    return Program(source, bpf, pin_root, text=text)


def compile_program(source: str, cfg: DatapathConfig, debug: int = 0) -> Program:
    """Compiles bpf/<source> against cfg's sizes, opening (or creating) the pinned maps, and
    records their layout beside the pins for processes that open them without bcc."""
    program = compile_source(source, cfg.pin_root, cfg.cflags(), debug)
    record_layout(program)
    release_memory()
    return program


def pinned_maps() -> dict[str, str]:
    """maps.h's pinned maps: C name -> pin file under the pin root."""
    return dict(_PINNED.findall((BPF_DIR / "lib" / "maps.h").read_text()))


def layout_of(program: Program) -> dict[str, tuple[str, Any, Any, Any]]:
    """maps.h's pinned maps as program opened them: name -> (pin file, bcc's key and value
    descriptions, the map's info)."""
    from .syscall import map_info

    lib, module = import_bcc().lib, program.bpf.module
    out = {}
    for name, pin in pinned_maps().items():
        fd = lib.bpf_table_fd(module, name.encode())
        if fd < 0:
            raise DatapathError(f"xlb: bpf/{program.name} has no map {name} (maps.h pins it)")
        key = json.loads(lib.bpf_table_key_desc(module, name.encode()).decode())
        leaf = json.loads(lib.bpf_table_leaf_desc(module, name.encode()).decode())
        out[name] = (pin, key, leaf, map_info(fd))
    return out


def record_layout(program: Program) -> None:
    """Pins the layout: for every pinned map, bcc's descriptions of its key and value types
    as this compile generated them from maps.h (see datapath/pinned.py). Refuses, before any
    program of this compile is attached, maps pinned by an xlb whose maps.h differed: bcc
    opens a pinned map whatever its layout, and the verifier would let a program read it
    with the wrong one."""
    import ctypes

    from .pinned import LayoutError, decode, read_layout, write_layout
    from .syscall import pinned_map_info

    try:
        before = read_layout(program.pin_root)
    except LayoutError:
        before = {}  # none yet (or pinned before layouts were)
    tables = {}
    for name, (pin, key, leaf, info) in layout_of(program).items():
        if info.id != pinned_map_info(os.path.join(program.pin_root, pin)).id:
            raise DatapathError(f"xlb: {program.pin_root}/{pin} is not the map {name} opened")
        sizes = (ctypes.sizeof(decode(key)), ctypes.sizeof(decode(leaf)))
        if sizes != (info.key_size, info.value_size):
            differs = f"{info.key_size}/{info.value_size}-byte key/value, now {sizes[0]}/{sizes[1]}"
        elif name in before and (before[name]["key"], before[name]["leaf"]) != (key, leaf):
            differs = "its key or value struct changed"
        else:
            tables[name] = (pin, key, leaf)
            continue
        raise DatapathError(
            f"xlb: the map {pin} pinned under {program.pin_root} was made by another xlb "
            f"({differs}); this one cannot use it, and the running datapath is left as it is. "
            "To switch: `xlb datapath down` (it drops tracked flows), then load again"
        )
    write_layout(program.pin_root, tables)
