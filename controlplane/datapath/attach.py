"""Attaching the compiled programs to the node with BPF links: XDP on each device, tcx on
its egress, the socket hooks on a cgroup v2 directory.

Links are the kernel's attachments that are objects of their own: pinned under
PIN_ROOT/links, they outlive the process that made them, a restarting xlb swaps its new
program into each in one step (BPF_LINK_UPDATE: the hook never runs without a program), and
they share their hooks: a cgroup link is always multi-attach (it neither evicts nor locks out
another program), tcx runs a chain of programs where xlb's is one (it returns TC_ACT_UNSPEC,
"next", for what it does not rewrite). XDP has one program per device: xlb never replaces
another's, and says so. Detaching removes xlb's links, and only xlb's legacy attachments
(netlink XDP, a tc filter, exclusive cgroup programs, left by an xlb before links) by name.
tcx needs kernel 6.6; before it, xlb's tc program is a filter at a priority of its own."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass

from . import import_bcc
from . import syscall as sc
from .programs import DatapathError, Program

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
# a legacy tc filter's place (kernels without tcx): a priority others rarely take
TC_PRIO, TC_HANDLE = 0xC1B, 0xC1B
XDP_NAME, TC_NAME, TC_IN_NAME, TC_POD_NAME = "xdp_lb", "tc_lb", "tc_lb_in", "tc_lb_pod"
# tc_lb_pod, pinned by the loader for the agent, which attaches it to pod veths as they come
POD_PROG_PIN, POD_LINK_PREFIX = "progs/tc_lb_pod", "tcx-pod"
# a tc hook by direction: the program, the tcx attach type, its clsact parent, its pin prefix
TC_HOOKS = {
    "egress": (TC_NAME, sc.BPF_TCX_EGRESS, "ffff:fff3", "tcx"),
    "ingress": (TC_IN_NAME, sc.BPF_TCX_INGRESS, "ffff:fff2", "tcx-in"),
}
ENOTSUPP = 524  # the kernel's own "not supported" (no tcx), which errno does not name

# sock_lb.c's entry points, the cgroup hook each is attached to, and its program type:
# socket-address hooks, and one packet hook (egress: source ranges of sockets the others
# pointed at a frontend that has them).
SOCK_HOOKS = (
    ("sock_connect4", "CGROUP_INET4_CONNECT", "CGROUP_SOCK_ADDR"),
    ("sock_connect6", "CGROUP_INET6_CONNECT", "CGROUP_SOCK_ADDR"),
    ("sock_sendmsg4", "CGROUP_UDP4_SENDMSG", "CGROUP_SOCK_ADDR"),
    ("sock_sendmsg6", "CGROUP_UDP6_SENDMSG", "CGROUP_SOCK_ADDR"),
    ("sock_recvmsg4", "CGROUP_UDP4_RECVMSG", "CGROUP_SOCK_ADDR"),
    ("sock_recvmsg6", "CGROUP_UDP6_RECVMSG", "CGROUP_SOCK_ADDR"),
    ("sock_getpeername4", "CGROUP_INET4_GETPEERNAME", "CGROUP_SOCK_ADDR"),
    ("sock_getpeername6", "CGROUP_INET6_GETPEERNAME", "CGROUP_SOCK_ADDR"),
    ("sock_egress", "CGROUP_INET_EGRESS", "CGROUP_SKB"),
)
OUR_NAMES = {XDP_NAME, TC_NAME, TC_IN_NAME, TC_POD_NAME} | {name[:15] for name, *_ in SOCK_HOOKS}


def links_dir(pin_root: str) -> str:
    return os.path.join(pin_root, "links")


@dataclass(frozen=True)
class Attachment:
    """One of xlb's links, as `xlb status` shows it."""

    pin: str
    kind: str  # xdp, tcx, cgroup
    link_id: int
    prog_id: int
    target: int  # ifindex, or cgroup id


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise DatapathError(
            f"xlb: no network interface {ifname!r} here; pass the node's uplink with --uplink"
        ) from None


def _open_link(pin: str) -> int | None:
    """The pinned link's fd, or None (no pin)."""
    try:
        return sc.obj_get(pin)
    except FileNotFoundError:
        return None


def _swap_or_create(pin: str, prog_fd: int, alive, create) -> str:
    """The program put into the link pinned at pin (updated in place while alive(info)
    says the link still holds its hook), else a new link from create() pinned there.
    Returns "updated" or "attached"."""
    fd = _open_link(pin)
    if fd is not None:
        try:
            if alive(sc.link_info(fd)):
                sc.link_update(fd, prog_fd)
                return "updated"
        finally:
            os.close(fd)
        os.unlink(pin)  # its device or cgroup went away: the link holds nothing
    fd = create()
    try:
        os.makedirs(os.path.dirname(pin), exist_ok=True)
        sc.obj_pin(fd, pin)
    finally:
        os.close(fd)
    return "attached"


# -- XDP ----------------------------------------------------------------------------------------


def xdp_attached(ifname: str) -> tuple[int, int]:
    """(program id, mode) of the XDP program on ifname: mode 1 native, 2 generic, 3 offload,
    0 none."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return 0, 0
        xdp = ipr.get_links(found[0])[0].get_attr("IFLA_XDP")
    if not xdp:
        return 0, 0
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
    # pyroute2 names the modes (XDP_ATTACHED_DRV, _SKB, _HW); older versions gave numbers
    mode = _XDP_MODES.get(mode, mode) if isinstance(mode, str) else mode
    return xdp.get_attr("IFLA_XDP_PROG_ID") or 0, mode


_XDP_MODES = {"xdp": 1, "drv": 1, "xdpgeneric": 2, "skb": 2, "xdpoffload": 3, "hw": 3, "multi": 4}


def attach_xdp(program: Program, ifname: str, native: bool = True) -> str:
    """xdp_lb on ifname by a link pinned under the program's pin root (native mode unless
    the driver lacks it); another's XDP program there is never replaced."""
    bcc = import_bcc()
    fn = program.function(XDP_NAME, bcc.BPF.XDP)
    index = _ifindex(ifname)
    pin = os.path.join(links_dir(program.pin_root), f"xdp-{index}")
    mode = 1 if native else 2
    prog_id, attached_mode = xdp_attached(ifname)
    ours = _open_link_alive(pin, index)
    # --generic-xdp changed (a native request that fell back to generic is no change)
    if ours and attached_mode not in (0, mode) and not (native and attached_mode == 2):
        _detach_pin(pin)  # a link keeps its mode: a new one
    elif prog_id and not ours:
        name = _prog_name(prog_id)
        if name != XDP_NAME:
            raise DatapathError(
                f"xlb: {ifname} already runs another XDP program ({name or '?'}, id "
                f"{prog_id}); xlb does not replace it: detach it or leave {ifname} out"
            )
        # an older xlb's netlink attachment: a link cannot be made beside it
        _remove_netlink_xdp(ifname, attached_mode)

    def create() -> int:
        if native:
            try:
                return sc.link_create(fn.fd, index, sc.BPF_XDP, XDP_FLAGS_DRV_MODE)
            except OSError as exc:  # the driver has no native XDP: the stack runs it
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, ENOTSUPP):
                    raise
        return sc.link_create(fn.fd, index, sc.BPF_XDP, XDP_FLAGS_SKB_MODE)

    try:
        return _swap_or_create(pin, fn.fd, lambda i: i.ifindex == index, create)
    except OSError as exc:
        raise DatapathError(f"xlb: cannot attach XDP to {ifname}: {exc.strerror}") from None


def _open_link_alive(pin: str, ifindex: int) -> bool:
    fd = _open_link(pin)
    if fd is None:
        return False
    try:
        return sc.link_info(fd).ifindex == ifindex
    finally:
        os.close(fd)


def _prog_name(prog_id: int) -> str:
    try:
        return sc.prog_name_by_id(prog_id)
    except OSError:
        return ""


# -- tc (tcx, else a filter) -------------------------------------------------------------------


def attach_tc(program: Program, ifname: str, direction: str = "egress") -> str:
    """tc_lb on ifname's egress (tc_lb_in on its ingress): a tcx link (kernel 6.6+) after the
    programs already there, else a clsact filter at xlb's own priority (never replacing
    another's)."""
    bcc = import_bcc()
    name, attach_type, parent, prefix = TC_HOOKS[direction]
    fn = program.function(name, bcc.BPF.SCHED_CLS)
    index = _ifindex(ifname)
    pin = os.path.join(links_dir(program.pin_root), f"{prefix}-{index}")

    def create() -> int:
        return sc.link_create(fn.fd, index, attach_type)

    try:
        done = _swap_or_create(pin, fn.fd, lambda i: i.ifindex == index, create)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
            raise DatapathError(f"xlb: cannot attach tc to {ifname}: {exc.strerror}") from None
        _attach_tc_filter(fn, ifname, parent)
        return "attached (tc filter: no tcx in this kernel)"
    _detach_tc_filter(ifname, direction)  # an older xlb's filter, if any: it would run twice
    return done


def _attach_tc_filter(fn, ifname: str, parent: str = "ffff:fff3") -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # another program (or ours) already made it
                raise DatapathError(f"xlb: cannot add clsact to {ifname}: {exc}") from None
        ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=fn.fd, name=fn.name,
               parent=parent, classid=1, direct_action=True, prio=TC_PRIO)  # fmt: skip


def _detach_tc_filter(ifname: str, direction: str = "egress") -> None:
    """xlb's own legacy filters on ifname's egress or ingress (by name: tc_lb, tc_lb_in), at
    its priority or at the one older xlbs used (1)."""
    from pyroute2 import IPRoute

    ours, _, parent, _ = TC_HOOKS[direction]
    with IPRoute() as ipr, contextlib.suppress(Exception):
        idx = ipr.link_lookup(ifname=ifname)[0]
        for f in ipr.get_filters(idx, parent=int(parent.replace(":", ""), 16)):
            options = f.get_attr("TCA_OPTIONS")
            name = options.get_attr("TCA_BPF_NAME") if options else None
            if name and name.split(":")[0] == ours:
                ipr.tc("del-filter", "bpf", idx, f["handle"], parent=parent,
                       prio=f["info"] >> 16)  # fmt: skip


# -- pod veths (--local-delivery redirect) --------------------------------------------------------


def pin_pod_program(program: Program) -> None:
    """tc_lb_pod loaded and pinned under the pin root, in place of an earlier xlb's: the
    agent attaches it to pod veths as they appear, long after the loader has exited."""
    bcc = import_bcc()
    fn = program.function(TC_POD_NAME, bcc.BPF.SCHED_CLS)
    pin = os.path.join(program.pin_root, POD_PROG_PIN)
    os.makedirs(os.path.dirname(pin), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pin)
    sc.obj_pin(fn.fd, pin)


def pod_hooks(pin_root: str) -> set[int]:
    """The ifindexes of the pod veths with tc_lb_pod's link pinned."""
    directory = links_dir(pin_root)
    prefix = POD_LINK_PREFIX + "-"
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return {int(n.removeprefix(prefix)) for n in names if n.startswith(prefix)}


def hook_pods(pin_root: str, add: set[int], remove: set[int]) -> dict[int, str]:
    """tc_lb_pod on the ingress of each pod veth in add (the host's end: the pod's packets),
    by a tcx link pinned as links/tcx-pod-IFINDEX (an existing one takes the pinned program,
    a new xlb's), and the links of remove (veths gone, or the mode off) unpinned. Returns
    the veths that could not be hooked, and why: their replies take the stack, as before."""
    for index in remove:
        _detach_pin(os.path.join(links_dir(pin_root), f"{POD_LINK_PREFIX}-{index}"))
    if not add:
        return {}
    failed: dict[int, str] = {}
    try:
        prog_fd = sc.obj_get(os.path.join(pin_root, POD_PROG_PIN))
    except OSError as exc:
        return dict.fromkeys(add, f"no pinned {TC_POD_NAME} ({exc.strerror})")
    try:
        for index in sorted(add):
            pin = os.path.join(links_dir(pin_root), f"{POD_LINK_PREFIX}-{index}")

            def create(index: int = index) -> int:
                return sc.link_create(prog_fd, index, sc.BPF_TCX_INGRESS)

            try:
                _swap_or_create(pin, prog_fd, lambda i, index=index: i.ifindex == index, create)
            except OSError as exc:  # gone meanwhile; no tcx (kernel < 6.6); not permitted
                failed[index] = exc.strerror or str(exc)
    finally:
        os.close(prog_fd)
    return failed


def load_xdp_pass():
    """bpf/xdp_pass.c, loaded (bcc's function; the caller keeps it while attaching). A veth
    receives the frames its peer sends with XDP_TX only while an XDP program is attached
    on its own side: the lab's LAN bridge ports need this one."""
    from .programs import BPF_DIR

    bcc = import_bcc()
    bpf = bcc.BPF(text=(BPF_DIR / "xdp_pass.c").read_bytes())
    return bpf.load_func(b"xdp_pass", bcc.BPF.XDP)


def attach_xdp_pass(xdp_pass, ifname: str) -> None:
    """xdp_pass (from load_xdp_pass) on ifname in the current namespace, in driver mode; a
    netlink attachment, gone with the link."""
    import_bcc().BPF.attach_xdp(ifname.encode(), xdp_pass, XDP_FLAGS_DRV_MODE)


# -- cgroup --------------------------------------------------------------------------------------


def load_sock_hooks(program: Program) -> None:
    bcc = import_bcc()
    for name, hook, kind in SOCK_HOOKS:
        program.function(name, getattr(bcc.BPF, kind), attach_type=getattr(bcc.BPFAttachType, hook))


def _cgroup_fd(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DatapathError(
            f"xlb: cgroup {path}: {exc.strerror}; give a cgroup v2 "
            "directory (e.g. /sys/fs/cgroup/unified or /sys/fs/cgroup)"
        ) from None


def _cgroup_id(path: str) -> int:
    """The cgroup's id: its directory's inode number on cgroup v2."""
    return os.stat(path).st_ino


def attach_sock(program: Program, cgroup: str) -> str:
    """Every socket hook on the cgroup v2 directory by links (multi-attach: other programs
    there keep running, and can still attach after xlb)."""
    bcc = import_bcc()
    load_sock_hooks(program)
    fd = _cgroup_fd(cgroup)
    cgroup_id = _cgroup_id(cgroup)
    done = set()
    try:
        _detach_exclusive(fd)  # an older xlb's exclusive attachments lock links out
        for name, hook, _ in SOCK_HOOKS:
            attach_type = getattr(bcc.BPFAttachType, hook)
            pin = os.path.join(links_dir(program.pin_root), f"cgroup-{name.removeprefix('sock_')}")
            prog_fd = program.functions[name].fd

            def create(prog_fd=prog_fd, attach_type=attach_type) -> int:
                return sc.link_create(prog_fd, fd, attach_type)

            done.add(_swap_or_create(pin, prog_fd, lambda i: i.u0 == cgroup_id, create))
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EPERM:
            hint = " (another program holds the hook exclusively, without BPF_F_ALLOW_MULTI)"
        raise DatapathError(
            f"xlb: cannot attach socket hooks to {cgroup}: {exc.strerror}{hint}"
        ) from None
    finally:
        os.close(fd)
    return ", ".join(sorted(done))


def _detach_exclusive(cgroup_fd: int) -> None:
    """xlb's own programs attached without links and without BPF_F_ALLOW_MULTI (by an xlb
    before links), found by name; another's are left."""
    bcc = import_bcc()
    for _, hook, _ in SOCK_HOOKS:
        attach_type = getattr(bcc.BPFAttachType, hook)
        with contextlib.suppress(OSError):
            ids, flags = sc.prog_query(cgroup_fd, attach_type)
            if ids and not flags & sc.BPF_F_ALLOW_MULTI and _prog_name(ids[0]) in OUR_NAMES:
                sc.prog_detach(cgroup_fd, attach_type)


# -- detaching and listing ----------------------------------------------------------------------


def _detach_pin(pin: str) -> None:
    fd = _open_link(pin)
    if fd is not None:
        try:
            with contextlib.suppress(OSError):  # already detached (its device went away)
                sc.link_detach(fd)
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pin)


def detach_links(pin_root: str) -> list[str]:
    """Every link xlb pinned under pin_root, detached and unpinned: only xlb's programs go."""
    directory = links_dir(pin_root)
    gone = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        _detach_pin(os.path.join(directory, name))
        gone.append(name)
    return gone


def _remove_netlink_xdp(ifname: str, mode: int) -> None:
    bcc = import_bcc()
    flags = XDP_FLAGS_DRV_MODE if mode == 1 else XDP_FLAGS_SKB_MODE
    bcc.BPF.remove_xdp(ifname.encode(), flags)


def detach_legacy(devices: list[str], cgroup: str | None) -> None:
    """What an xlb before links attached: its netlink XDP programs and tc filters on the
    devices, its exclusive cgroup programs; each by name, so nothing of another's (a program
    held by a link, anyone's, refuses netlink's removal)."""
    for device in devices:
        prog_id, mode = xdp_attached(device)
        if prog_id and _prog_name(prog_id) == XDP_NAME:
            with contextlib.suppress(Exception):
                _remove_netlink_xdp(device, mode)
        _detach_tc_filter(device)
        _detach_tc_filter(device, "ingress")
    if cgroup and os.path.isdir(cgroup):
        fd = _cgroup_fd(cgroup)
        try:
            _detach_exclusive(fd)
        finally:
            os.close(fd)


def detach_sock(cgroup: str, pin_root: str) -> None:
    """xlb's socket hooks on the cgroup: its links under pin_root and an older xlb's
    exclusive attachments; another's programs stay."""
    directory = links_dir(pin_root)
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.startswith("cgroup-"):
            _detach_pin(os.path.join(directory, name))
    detach_legacy([], cgroup)


def attachments(pin_root: str) -> list[Attachment]:
    """xlb's links under pin_root, for `xlb status`."""
    directory = links_dir(pin_root)
    out = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        fd = _open_link(os.path.join(directory, name))
        if fd is None:
            continue
        try:
            info = sc.link_info(fd)
        finally:
            os.close(fd)
        kind = {sc.LINK_TYPE_XDP: "xdp", sc.LINK_TYPE_TCX: "tcx", sc.LINK_TYPE_CGROUP: "cgroup"}
        target = info.ifindex if info.type != sc.LINK_TYPE_CGROUP else info.u0
        out.append(Attachment(name, kind.get(info.type, str(info.type)), info.id, info.prog_id,
                              target))  # fmt: skip
    return out


# -- where things are ---------------------------------------------------------------------------


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
