"""The lab's processes: started in a namespace (and a cgroup), watched, waited for, and
found gone. Nothing here knows what a cluster is."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from . import topology as topo
from .topology import LabError


def join_cgroup(cgroup: str | None) -> None:
    """Moves the calling process into cgroup (None: it stays): a preexec_fn's work, so that
    the child's sockets meet the socket hooks attached there."""
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def spawn(ns: str, cgroup: str | None, log_path: Path, cmd: list[str]) -> int:
    """cmd in network namespace ns (and cgroup, if given), in its own session, its output
    appended to log_path; its pid."""

    def join() -> None:
        os.setsid()
        join_cgroup(cgroup)

    out = open(log_path, "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", *cmd],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=join,
        cwd=Path(__file__).resolve().parents[2],
    )
    out.close()
    return proc.pid


def wait_listening(ns: str, ports: list[list], timeout: float = 10) -> None:
    """Until something in ns listens on every [name, port, protocol]."""
    wanted = [(str(proto).lower(), int(port)) for _, port, proto in ports]
    deadline = time.monotonic() + timeout
    while not topo.listening(ns, wanted):
        if time.monotonic() > deadline:
            raise LabError(f"xlb lab: the server in {ns} is not listening on {wanted}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether pid runs; an exited child of this process (a zombie until reaped) does not.
    0 (no process: a lab node without xlb) never runs, and must not reach waitpid or kill,
    where it means the whole process group."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rmdir_cgroup(path: Path) -> None:
    """A cgroup goes once its processes are gone; they may take a moment to be reaped."""
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
