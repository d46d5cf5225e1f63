"""The datapath's numbers come from the C headers: the parser evaluates what C would, and the
tables the control plane uses follow maps.h when it changes."""

from __future__ import annotations

import re

import pytest

from controlplane.datapath import constants, maps


def test_the_parser_evaluates_integer_defines_as_c_does(tmp_path):
    (tmp_path / "a.h").write_text(
        "#define XLB_A 0x10 /* sixteen */\n"
        "#define XLB_B (2ULL * XLB_A)\n"
        "#define XLB_C ((XLB_B << 2) | 1U)\n"
        "#define XLB_D (XLB_C / 3 - ~0)\n"
        '#define XLB_S "/sys/fs/bpf/xlb"\n'
        "#define XLB_F(x) ((x) + 1)\n"
        "#define XLB_LOOP XLB_LOOP\n"
    )
    (tmp_path / "b.h").write_text("#define XLB_E (XLB_A + 1000000000ULL)\n")
    got = constants.defines(tmp_path)
    assert got == {"XLB_A": 16, "XLB_B": 32, "XLB_C": 129, "XLB_D": 44, "XLB_E": 1000000016}


def test_reasons_follow_maps_h_in_order():
    text = (constants.BPF_LIB / "maps.h").read_text()
    numbered = re.findall(r"^#define XLB_R_([A-Z0-9_]+) (\d+)", text, re.M)
    names = [n.lower() for n, v in sorted(numbered, key=lambda nv: int(nv[1])) if n != "MAX"]
    assert tuple(names) == maps.REASONS and len(names) == constants.value("XLB_R_MAX")


def test_flags_and_timeouts_are_the_headers_values():
    assert constants.value("XLB_NS_PER_SEC") == maps.ANNOUNCE_GRACE_NS  # 1 s, in ns
    assert {maps.SVC_F_PRESERVE_CLIENT, maps.SVC_F_DROP_EMPTY, maps.SVC_F_SOURCE_RANGES} == {
        1,
        2,
        4,
    }
    with pytest.raises(KeyError, match="XLB_NO_SUCH"):
        constants.value("XLB_NO_SUCH")
