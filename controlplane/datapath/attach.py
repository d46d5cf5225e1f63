"""Attaching the compiled programs to the node: XDP on the uplink, tc on its egress, the
socket hooks on a cgroup v2 directory. Every attachment outlives the process that made it
(netlink and cgroups hold the programs), so a restarting agent never leaves a gap: it
attaches its new programs over the old ones in one step each."""

from __future__ import annotations

import contextlib
import os

from . import import_bcc
from .programs import DatapathError, Program

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


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


def detach_sock(cgroup: str) -> None:
    """Removes xlb's socket hooks from the cgroup (whatever program is attached there)."""
    from .syscall import prog_detach

    bcc = import_bcc()
    fd = _cgroup_fd(cgroup)
    try:
        for _, hook in SOCK_HOOKS:
            with contextlib.suppress(OSError):
                prog_detach(fd, getattr(bcc.BPFAttachType, hook))
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


def attach_tc(program: Program, ifname: str) -> None:
    """Puts tc_lb on ifname's egress (clsact), replacing xlb's previous filter in one step."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    bcc = import_bcc()
    fn = program.function("tc_lb", bcc.BPF.SCHED_CLS)
    with IPRoute() as ipr:
        idx = _ifindex(ipr, ifname)
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: another program (or ours) already made it
                raise DatapathError(f"xlb: cannot add clsact to {ifname}: {exc}") from None
        ipr.tc(
            "replace-filter",
            "bpf",
            idx,
            ":1",
            fd=fn.fd,
            name=fn.name,
            parent="ffff:fff3",
            classid=1,
            direct_action=True,
            prio=1,
        )


def detach_tc(ifname: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr, contextlib.suppress(Exception):
        ipr.tc("del-filter", "bpf", _ifindex(ipr, ifname), ":1", parent="ffff:fff3", prio=1)


def _ifindex(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise DatapathError(
            f"xlb: no network interface {ifname!r} here; pass the node's uplink with --uplink"
        )
    return found[0]


def default_uplink(node_ips: list[str] | None = None) -> str:
    """The interface that holds the first of node_ips (the node's own address: where the
    cluster reaches it), else the one of the default route (IPv4, else IPv6). On a node with
    a NAT interface for the internet and a private network for the cluster (Vagrant, many
    bare-metal racks), the default route's is the wrong one."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for address in node_ips or []:
            for a in ipr.get_addr(address=address):
                return ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
        for family in (2, 10):
            for route in ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif:
                    return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
    raise DatapathError("xlb: no default route to find the uplink by; pass --uplink IFNAME")
