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

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


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


def compile_program(source: str, cfg: DatapathConfig, debug: int = 0) -> Program:
    """Compiles bpf/<source> against cfg's sizes, opening (or creating) the pinned maps."""
    bcc = import_bcc()
    ensure_bpffs(cfg.pin_root)
    text = expand(BPF_DIR / source)
    try:
        bpf = bcc.BPF(
            text=text.encode(), cflags=cfg.cflags() + ["-Wno-unused-function"], debug=debug
        )
    except Exception as exc:  # bcc raises plain Exception for compile and map errors
        raise DatapathError(f"xlb: cannot load bpf/{source}: {exc}") from None
    return Program(source, bpf)


def attach_xdp(program: Program, ifname: str, native: bool = True) -> None:
    """Attaches xdp_lb to ifname (native mode unless the driver lacks it)."""
    bcc = import_bcc()
    fn = program.function("xdp_lb", bcc.BPF.XDP)
    try:
        bcc.BPF.attach_xdp(ifname, fn, XDP_FLAGS_DRV_MODE if native else XDP_FLAGS_SKB_MODE)
    except Exception as exc:
        raise DatapathError(f"xlb: cannot attach XDP to {ifname}: {exc}") from None


def detach_xdp(ifname: str) -> None:
    bcc = import_bcc()
    for flags in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
        with contextlib.suppress(Exception):  # nothing attached in that mode
            bcc.BPF.remove_xdp(ifname, flags)


# sock_lb.c's entry points and the cgroup hook each is attached to.
SOCK_HOOKS = (
    ("sock_connect4", "CGROUP_INET4_CONNECT"),
    ("sock_connect6", "CGROUP_INET6_CONNECT"),
    ("sock_sendmsg4", "CGROUP_UDP4_SENDMSG"),
    ("sock_sendmsg6", "CGROUP_UDP6_SENDMSG"),
    ("sock_recvmsg4", "CGROUP_UDP4_RECVMSG"),
    ("sock_recvmsg6", "CGROUP_UDP6_RECVMSG"),
    ("sock_getpeername4", "CGROUP_INET4_GETPEERNAME"),
    ("sock_getpeername6", "CGROUP_INET6_GETPEERNAME"),
)


def load_sock_hooks(program: Program) -> None:
    bcc = import_bcc()
    for name, hook in SOCK_HOOKS:
        program.function(
            name, bcc.BPF.CGROUP_SOCK_ADDR, attach_type=getattr(bcc.BPFAttachType, hook)
        )


def _cgroup_fd(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DatapathError(
            f"xlb: cgroup {path}: {exc.strerror}; give a cgroup v2 "
            "directory (e.g. /sys/fs/cgroup/unified or /sys/fs/cgroup)"
        ) from None


def attach_sock(program: Program, cgroup: str) -> None:
    """Attaches every socket hook to the cgroup v2 directory (replacing xlb's previous ones:
    attaching without BPF_F_ALLOW_MULTI swaps the program in one step)."""
    bcc = import_bcc()
    load_sock_hooks(program)
    fd = _cgroup_fd(cgroup)
    try:
        for name, hook in SOCK_HOOKS:
            bcc.BPF.attach_func(program.functions[name], fd, getattr(bcc.BPFAttachType, hook))
    except Exception as exc:
        raise DatapathError(f"xlb: cannot attach socket hooks to {cgroup}: {exc}") from None
    finally:
        os.close(fd)


def detach_sock(program: Program, cgroup: str) -> None:
    bcc = import_bcc()
    load_sock_hooks(program)
    fd = _cgroup_fd(cgroup)
    try:
        for name, hook in SOCK_HOOKS:
            with contextlib.suppress(Exception):
                bcc.BPF.detach_func(program.functions[name], fd, getattr(bcc.BPFAttachType, hook))
    finally:
        os.close(fd)


def cgroup2_root() -> str:
    """Where cgroup v2 is mounted (/sys/fs/cgroup on unified hosts, .../unified on hybrid)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if parts[2] == "cgroup2":
                return parts[1]
    raise DatapathError(
        "xlb: no cgroup v2 mounted; mount it (mount -t cgroup2 none "
        "/sys/fs/cgroup/unified) to use the socket hooks"
    )
