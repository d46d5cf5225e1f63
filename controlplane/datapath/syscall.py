"""bpf(2) without bcc: running a program on a packet (BPF_PROG_TEST_RUN), opening pins and
reading what they hold, detaching from cgroups; datapath/pinned.py builds map access on it."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import platform
from dataclasses import dataclass

# bpf(2)'s number differs by architecture (the kernel's syscall tables); its attribute
# layouts do not (every pointer is an __aligned_u64).
_SYS_BPF_BY_MACHINE = {
    "x86_64": 321,
    "amd64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "armv7l": 386,
    "armv6l": 386,
    "i686": 357,
    "i386": 357,
}


def sys_bpf_number(machine: str | None = None) -> int:
    machine = machine or platform.machine()
    try:
        return _SYS_BPF_BY_MACHINE[machine]
    except KeyError:
        raise OSError(
            errno.ENOSYS, f"xlb does not know bpf(2)'s number on {machine}: add it to syscall.py"
        ) from None


_SYS_BPF = sys_bpf_number()
_BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

_libc = ct.CDLL(None, use_errno=True)


class _TestRunAttr(ct.Structure):
    _fields_ = [
        ("prog_fd", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("data_in", ct.c_uint64),
        ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32),
        ("duration", ct.c_uint32),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("ctx_in", ct.c_uint64),
        ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class XdpMd(ct.Structure):
    """struct xdp_md as BPF_PROG_TEST_RUN takes it: data 0, data_end the packet's length."""

    _fields_ = [
        (n, ct.c_uint32)
        for n in (
            "data",
            "data_end",
            "data_meta",
            "ingress_ifindex",
            "rx_queue_index",
            "egress_ifindex",
        )
    ]


@dataclass(frozen=True)
class TestRun:
    retval: int
    data: bytes
    duration_ns: int  # per run, as the kernel measured it


def prog_test_run(
    prog_fd: int,
    packet: bytes,
    repeat: int = 1,
    ifindex: int = 0,
    flags: int = 0,
    batch_size: int = 0,
) -> TestRun:
    """Runs the program on packet in the kernel; the output packet is what it left behind."""
    data_in = ct.create_string_buffer(packet, len(packet))
    out_size = len(packet) + 512  # room for replies that grow the packet
    data_out = ct.create_string_buffer(out_size)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_in=ct.addressof(data_in),
        repeat=repeat,
        flags=flags,
        batch_size=batch_size,
    )
    if not flags & BPF_F_TEST_XDP_LIVE_FRAMES:
        attr.data_size_out = out_size
        attr.data_out = ct.addressof(data_out)
    ctx = XdpMd(data_end=len(packet), ingress_ifindex=ifindex)  # the kernel wants data_end
    if ifindex:
        attr.ctx_in = ct.addressof(ctx)
        attr.ctx_size_in = ct.sizeof(ctx)
    if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return TestRun(attr.retval, data_out.raw[: attr.data_size_out], attr.duration)


_BPF_OBJ_GET = 7
_BPF_PROG_DETACH = 9
_BPF_OBJ_GET_INFO_BY_FD = 15


class _ObjGetAttr(ct.Structure):
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class MapInfo(ct.Structure):
    """The head of struct bpf_map_info: enough to size a map."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _DetachAttr(ct.Structure):
    _fields_ = [
        ("target_fd", ct.c_uint32),
        ("attach_bpf_fd", ct.c_uint32),
        ("attach_type", ct.c_uint32),
        ("attach_flags", ct.c_uint32),
    ]


def bpf(cmd: int, attr: ct.Structure) -> int:
    """One bpf(2) command; its result, or OSError with the errno (ENOENT: FileNotFoundError)."""
    ret = _libc.syscall(_SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


_BPF_MAP_CREATE = 0
_BPF_OBJ_PIN = 6


class _MapCreateAttr(ct.Structure):
    _fields_ = [
        ("map_type", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("numa_node", ct.c_uint32),
        ("map_name", ct.c_char * 16),
    ]


MAP_TYPE_ARRAY = 2
MAP_F_INNER_MAP = 1 << 12  # BPF_F_INNER_MAP: an inner map whose size may differ from the template's


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str, flags: int = 0
) -> int:
    """A new map's file descriptor (the caller closes it; a pin, or an outer map holding it,
    keeps the map)."""
    attr = _MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[:15],
    )
    return bpf(_BPF_MAP_CREATE, attr)


_BPF_MAP_GET_FD_BY_ID = 14


class _GetIdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32)]


def map_fd_by_id(map_id: int) -> int:
    """A new file descriptor for the map with this id (what a map-in-map lookup from user space
    returns); FileNotFoundError when it is gone."""
    return bpf(_BPF_MAP_GET_FD_BY_ID, _GetIdAttr(id=map_id))


def obj_pin(fd: int, path: str) -> None:
    buf = ct.create_string_buffer(path.encode())
    bpf(_BPF_OBJ_PIN, _ObjGetAttr(pathname=ct.addressof(buf), bpf_fd=fd))


# The map commands of bpf(2).
MAP_LOOKUP, MAP_UPDATE, MAP_DELETE, MAP_NEXT_KEY = 1, 2, 3, 4
MAP_LOOKUP_BATCH, MAP_UPDATE_BATCH, MAP_DELETE_BATCH = 24, 26, 27


class _ElemAttr(ct.Structure):
    _fields_ = [
        ("map_fd", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("key", ct.c_uint64),
        ("value", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


class _BatchAttr(ct.Structure):
    _fields_ = [
        ("in_batch", ct.c_uint64),
        ("out_batch", ct.c_uint64),
        ("keys", ct.c_uint64),
        ("values", ct.c_uint64),
        ("count", ct.c_uint32),
        ("map_fd", ct.c_uint32),
        ("elem_flags", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


def map_elem(cmd: int, fd: int, key: int, value: int = 0) -> bool:
    """One map command on one entry (key and value: addresses, 0 for none; for
    MAP_NEXT_KEY value receives the next key). False when the kernel says ENOENT (no such
    entry, or no next one); other errors raise."""
    try:
        bpf(cmd, _ElemAttr(map_fd=fd, key=key, value=value))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_batch(
    cmd: int, fd: int, keys: int, values: int, count: int, in_batch: int = 0, out_batch: int = 0
) -> tuple[int, bool]:
    """A batch command on count entries at keys and values (addresses): how many the kernel
    did, and whether it reached the end of the map (ENOENT: the last, maybe partial, chunk)."""
    attr = _BatchAttr(
        in_batch=in_batch, out_batch=out_batch, keys=keys, values=values, count=count, map_fd=fd
    )
    try:
        bpf(cmd, attr)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return attr.count, True
    return attr.count, False


def obj_get(path: str) -> int:
    """A new file descriptor for the object pinned at path (the caller closes it)."""
    buf = ct.create_string_buffer(path.encode())
    return bpf(_BPF_OBJ_GET, _ObjGetAttr(pathname=ct.addressof(buf)))


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)),
    )
    return info


def pinned_map_info(path: str) -> MapInfo:
    """Type and sizes of the map pinned at path."""
    fd = obj_get(path)
    try:
        return map_info(fd)
    finally:
        os.close(fd)


def prog_detach(target_fd: int, attach_type: int) -> None:
    """Detaches the one program attached (without BPF_F_ALLOW_MULTI) at target for type."""
    bpf(_BPF_PROG_DETACH, _DetachAttr(target_fd=target_fd, attach_type=attach_type))


# -- links: attachments that are objects of their own (pinned, updated in place, and never
# evicting or locking out another program's) --------------------------------------------------

_BPF_PROG_QUERY = 16
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_LINK_CREATE = 28
_BPF_LINK_UPDATE = 29
_BPF_LINK_DETACH = 34

# attach types (enum bpf_attach_type) used here beyond the cgroup ones bcc names
BPF_XDP = 37
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# link types (enum bpf_link_type)
LINK_TYPE_CGROUP = 3
LINK_TYPE_XDP = 6
LINK_TYPE_TCX = 11
BPF_F_ALLOW_MULTI = 1 << 1


class _LinkCreateAttr(ct.Structure):
    _fields_ = [
        ("prog_fd", ct.c_uint32),
        ("target", ct.c_uint32),  # an fd (cgroup) or an ifindex (XDP, tcx)
        ("attach_type", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("relative", ct.c_uint32),  # tcx: 0, appended after the programs already there
        ("pad", ct.c_uint32),
        ("expected_revision", ct.c_uint64),
        ("rest", ct.c_uint64 * 2),
    ]


class _LinkUpdateAttr(ct.Structure):
    _fields_ = [
        ("link_fd", ct.c_uint32),
        ("new_prog_fd", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("old_prog_fd", ct.c_uint32),
    ]


class _LinkDetachAttr(ct.Structure):
    _fields_ = [("link_fd", ct.c_uint32)]


class LinkInfo(ct.Structure):
    """The head of struct bpf_link_info and the union's members used here: ifindex for XDP
    and tcx (0 once the device is gone), cgroup id for cgroup links."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("prog_id", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("u0", ct.c_uint64),  # xdp/tcx: ifindex (low 32 bits); cgroup: cgroup_id
        ("u1", ct.c_uint64),  # tcx: (attach_type in the high half); cgroup: attach_type
        ("rest", ct.c_uint64 * 6),
    ]

    @property
    def ifindex(self) -> int:
        return self.u0 & 0xFFFFFFFF


class ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info, up to its name."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
    ]


class _QueryAttr(ct.Structure):
    _fields_ = [
        ("target", ct.c_uint32),
        ("attach_type", ct.c_uint32),
        ("query_flags", ct.c_uint32),
        ("attach_flags", ct.c_uint32),
        ("prog_ids", ct.c_uint64),
        ("prog_cnt", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("prog_attach_flags", ct.c_uint64),
        ("link_ids", ct.c_uint64),
        ("link_attach_flags", ct.c_uint64),
        ("revision", ct.c_uint64),
    ]


class _GetFdByIdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32)]


def link_create(prog_fd: int, target: int, attach_type: int, flags: int = 0) -> int:
    """A new link's fd: prog_fd attached at target (cgroup fd or ifindex) for attach_type."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target=target, attach_type=attach_type, flags=flags)
    return bpf(_BPF_LINK_CREATE, attr)


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Puts new_prog_fd in the link's place in one step (the hook never runs without one)."""
    bpf(_BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd))


def link_detach(link_fd: int) -> None:
    bpf(_BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd))


def link_info(fd: int) -> LinkInfo:
    info = LinkInfo()
    bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)),
    )
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)),
    )
    return info


def prog_name_by_id(prog_id: int) -> str:
    """The name of a loaded program (needs CAP_SYS_ADMIN, as the loader has)."""
    fd = bpf(_BPF_PROG_GET_FD_BY_ID, _GetFdByIdAttr(id=prog_id))
    try:
        return prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def prog_query(target: int, attach_type: int) -> tuple[list[int], int]:
    """The ids of the programs attached at target for attach_type, and the attach flags
    (BPF_F_ALLOW_MULTI or not) of the hook."""
    ids = (ct.c_uint32 * 64)()
    attr = _QueryAttr(
        target=target, attach_type=attach_type, prog_ids=ct.addressof(ids), prog_cnt=64
    )
    bpf(_BPF_PROG_QUERY, attr)
    return list(ids[: attr.prog_cnt]), attr.attach_flags
