"""bpf(2)'s number on every architecture xlb names, against the kernel's own tables as the
machine has them (linux-libc-dev's UAPI headers; valgrind's tables where installed), so the
agent works on arm64 nodes too without a guess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.datapath.syscall import _SYS_BPF_BY_MACHINE, sys_bpf_number

# machine -> the header that defines its __NR_bpf
TABLES = {
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "i686": "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
    # arm64, riscv64 and loongarch64 take the generic table
    "aarch64": "/usr/include/asm-generic/unistd.h",
    "riscv64": "/usr/include/asm-generic/unistd.h",
    "loongarch64": "/usr/include/asm-generic/unistd.h",
    "armv7l": "/usr/include/valgrind/vki/vki-scnums-arm-linux.h",
    "ppc64le": "/usr/include/valgrind/vki/vki-scnums-ppc64-linux.h",
}
PRESENT = {m: p for m, p in TABLES.items() if Path(p).exists()}


@pytest.mark.parametrize("machine", sorted(PRESENT))
def test_the_number_is_the_kernels(machine):
    text = Path(PRESENT[machine]).read_text()
    found = re.search(r"#define __NR_bpf\s+(\d+)\b", text)
    assert found, PRESENT[machine]
    assert sys_bpf_number(machine) == int(found.group(1))


def test_the_kernels_tables_were_there():
    """x86-64 and the generic table come with the C library's headers on every machine."""
    assert {"x86_64", "aarch64"} <= set(PRESENT)


def test_an_unknown_machine_is_one_clear_error():
    with pytest.raises(OSError, match="does not know bpf.2.'s number on vax"):
        sys_bpf_number("vax")
    assert "aarch64" in _SYS_BPF_BY_MACHINE
