"""Compiling, loading, attaching and pinning the BPF programs in bpf/.

bcc rewrites map operations only in the main source file, so headers under bpf/lib are
inlined here, each behind a #line marker so that compiler errors still name the real file
and line. Every program pins its maps under the same root: a program loaded later, or by a
restarted agent, opens the same maps and traffic never stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import import_bcc
from .config import DatapathConfig

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


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


@dataclass
class Program:
    """One compiled entry program (a bcc BPF object) and the functions loaded from it."""

    name: str
    bpf: Any
    functions: dict[str, Any] = field(default_factory=dict)

    def function(self, name: str, prog_type: int, **kw: Any) -> Any:
        if name not in self.functions:
            self.functions[name] = self.bpf.load_func(name.encode(), prog_type, **kw)
        return self.functions[name]

    def table(self, name: str) -> Any:
        return self.bpf[name.encode()]

    def cleanup(self) -> None:
        self.bpf.cleanup()


def _compile(source: str, pin_root: str, cflags: list[str], debug: int = 0) -> Program:
    bcc = import_bcc()
    ensure_bpffs(pin_root)
    text = expand(BPF_DIR / source)
    try:
        bpf = bcc.BPF(text=text.encode(), cflags=cflags + ["-Wno-unused-function"], debug=debug)
    except Exception as exc:  # bcc raises plain Exception for compile and map errors
        raise DatapathError(f"xlb: cannot load bpf/{source}: {exc}") from None
    return Program(source, bpf)


def compile_program(source: str, cfg: DatapathConfig, debug: int = 0) -> Program:
    """Compiles bpf/<source> against cfg's sizes, opening (or creating) the pinned maps."""
    program = _compile(source, cfg.pin_root, cfg.cflags(), debug)
    release_memory()
    return program


def release_memory() -> None:
    """Hands the heap's free pages back to the system: a compile (LLVM) or a big sync
    leaves tens of MB free but resident in the allocator otherwise (glibc only)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# Pinned map file -> the size macro it was created with (stats shares XLB_MAX_SERVICES).
_SIZE_MACROS = {
    "services": "XLB_MAX_SERVICES",
    "backends": "XLB_MAX_BACKENDS",
    "slots": "XLB_MAX_SLOTS",
    "ct": "XLB_CT_SIZE",
    "affinity": "XLB_AFFINITY_SIZE",
    "source_ranges": "XLB_MAX_SOURCE_RANGES",
    "sock_rev": "XLB_SOCK_REV_SIZE",
}


def open_pinned(pin_root: str) -> Program:
    """The maps an agent pinned under pin_root, whatever sizes it chose (read from the pins),
    for readers such as `xlb status` that run beside the agent or without it."""
    from .syscall import pinned_map_info

    if not os.path.exists(os.path.join(pin_root, "services")):
        raise DatapathError(
            f"xlb: no xlb maps pinned under {pin_root}; is the datapath "
            "loaded on this node (xlb datapath up), or is it another --pin-root?"
        )
    flags = [f'-DXLB_PIN_ROOT="{pin_root}"']
    for name, macro in _SIZE_MACROS.items():
        flags.append(f"-D{macro}={pinned_map_info(os.path.join(pin_root, name)).max_entries}")
    ring_entries = pinned_map_info(os.path.join(pin_root, "rings")).max_entries
    flags += ["-DXLB_MAX_RINGS=1", f"-DXLB_RING_SIZE={ring_entries // 2}"]
    return _compile("maps.c", pin_root, flags)
