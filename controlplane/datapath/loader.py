"""Compiling and attaching the datapath in a process of its own.

bcc compiles with LLVM inside the calling process, and what that maps and touches stays
resident for the life of the process: about 100 MB, more than everything else an agent
holds at 10,000 Services. So the agent runs this module as a child: it compiles the three
programs against the pinned maps, records their layout beside the pins, attaches them (the
attachments hold the programs, the pins hold the maps) and exits. The agent then opens the
maps from the pins (datapath/pinned.py) and never imports bcc.

  python -m controlplane.datapath.loader --config '{...}' [--devices IF,IF --cgroup DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from . import BccMissing
from .config import SIZE_FIELDS, DatapathConfig
from .conntrack import Timeouts
from .programs import DatapathError

PROGRAMS = ("xdp_lb.c", "tc_lb.c", "sock_lb.c")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # where `controlplane` lives


def load(
    cfg: DatapathConfig,
    devices: list[str] | str | None = None,
    cgroup: str | None = None,
    native: bool = True,
) -> None:
    """Compiles the programs against cfg's pinned maps (creating them if none are pinned)
    and, given devices and a cgroup, attaches them there (XDP and tc on every device), in a
    child process. Raises DatapathError with the child's own message when it fails."""
    if isinstance(devices, str):
        devices = [devices]
    cmd = [sys.executable, "-m", __name__, "--config", json.dumps(dataclasses.asdict(cfg))]
    if devices and cgroup:
        cmd += ["--devices", ",".join(devices), "--cgroup", cgroup]
        cmd += [] if native else ["--generic-xdp"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except subprocess.TimeoutExpired:
        raise DatapathError("xlb: compiling the BPF programs took over 10 minutes") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        tail = next((line for line in reversed(lines) if line.startswith("xlb:")), None)
        # bcc says why a compile failed on lines of its own before ours (a map it could not
        # open, a verifier message): the first few go along
        said = [line.strip() for line in lines if not line.startswith(("xlb:", " ", "\t"))]
        if tail and said:
            tail += " (" + "; ".join(said[:3]) + ")"
        if tail and "Operation not permitted" in tail:
            tail += (
                ": compiling against pinned maps needs CAP_SYS_ADMIN (bcc reopens them by "
                "id); run `xlb prepare-node --uplink ...` privileged and the agent with "
                "--preloaded, as the DaemonSet does"
            )
        raise DatapathError(
            tail
            or f"xlb: the loader failed ({done.returncode}): "
            + ("\n".join(lines[-20:]) or "no output")
        )
    if done.stderr.strip():  # bcc's warnings: the user should still see them
        sys.stderr.write(done.stderr)


def _load_here(cfg: DatapathConfig, devices: list[str], cgroup: str | None, native: bool) -> None:
    from . import attach, import_bcc, migrate
    from .programs import compile_program

    migration = migrate.prepare(cfg)  # maps laid out by another xlb: carried over first
    attached = False
    try:
        xdp, tc, sock = (compile_program(source, cfg) for source in PROGRAMS)
        for line in pinned_sizes(cfg):
            print(line, file=sys.stderr)
        if devices and cgroup:
            for device in devices:
                attach.attach_xdp(xdp, device, native)
                attached = True  # a program on the new maps runs: no way back to the old ones
                attach.attach_tc(tc, device)
                attach.attach_tc(tc, device, "ingress")  # acts with --local-delivery redirect
            attach.pin_pod_program(tc)  # the agent hooks pod veths with it (redirect)
            attach.attach_sock(sock, cgroup)
        else:  # loaded only to see that the verifier takes them; the pinned maps stay
            bpf = import_bcc().BPF
            xdp.function("xdp_lb", bpf.XDP)
            tc.function("tc_lb", bpf.SCHED_CLS)
            tc.function("tc_lb_in", bpf.SCHED_CLS)
            tc.function("tc_lb_pod", bpf.SCHED_CLS)
            attach.load_sock_hooks(sock)
    except BaseException:
        if migration is not None and attached:
            migration.finish()
        elif migration is not None:
            migration.abort()
        raise
    if migration is not None:
        late = migration.finish()
        names = ", ".join(pin for pin, *_ in migration.moved.values())
        print(
            f"xlb: carried the maps {names} over from another xlb's layout ({late} entries "
            "made meanwhile copied again)",
            file=sys.stderr,
        )


def pinned_sizes(cfg: DatapathConfig) -> list[str]:
    """Warnings for pinned maps that kept another size than cfg asks for: a pinned map is
    reused as it is (its entries are live flows), so a new size needs `xlb datapath down`
    first."""
    from .syscall import pinned_map_info

    wanted = {pin: getattr(cfg, field) for pin, field in SIZE_FIELDS.items()}
    have = {pin: pinned_map_info(os.path.join(cfg.pin_root, pin)).max_entries for pin in wanted}
    return [
        f"xlb: warning: the pinned map {pin} keeps its {have[pin]} entries, not {want} as "
        "configured, until `xlb datapath down` (which drops tracked flows)"
        for pin, want in wanted.items()
        if have[pin] != want
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controlplane.datapath.loader", description=__doc__)
    p.add_argument("--config", required=True, help="DatapathConfig as JSON")
    p.add_argument("--devices", default="", help="comma-separated")
    p.add_argument("--cgroup")
    p.add_argument("--generic-xdp", action="store_true")
    args = p.parse_args(argv)
    fields = json.loads(args.config)
    fields["snat_ports"] = tuple(fields["snat_ports"])
    if "ct_timeouts" in fields:
        fields["ct_timeouts"] = Timeouts(**fields["ct_timeouts"])
    try:
        devices = [d for d in args.devices.split(",") if d]
        _load_here(DatapathConfig(**fields), devices, args.cgroup, not args.generic_xdp)
    except (DatapathError, BccMissing) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
