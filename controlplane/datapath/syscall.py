"""The bpf(2) commands bcc does not wrap: running a program on a packet (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes as ct
import os
from dataclasses import dataclass

_SYS_BPF = 321  # x86_64
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
