"""XSAVE component 15: byte layout, XSAVES/XRSTORS rules, the init configuration (facts §4.6)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from lbr_helpers import (
    ARCH_CPU,
    CTL_ALL,
    LBR_CTL,
    LBR_DEPTH,
    LER_FROM,
    LER_INFO,
    LER_TO,
    XSTATE_LBR,
    arch_records,
    make_vcpu,
)
from vpmu_intel_archlbr.xsave import ArchLbrComponent, component_size

from vpmu_core import GuestFault, Work
from vpmu_core.hv.xsave import XsaveArea


def recorded(options: dict[str, Any] | None = None, guest_options: dict[str, Any] | None = None, seed: int = 0) -> Any:
    v = make_vcpu(ARCH_CPU, "arch_lbr", seed=seed, options=options, guest_options=guest_options)
    v.wrmsr(LBR_CTL, CTL_ALL)
    v.execute(Work(instructions=2_000_000, branches=200_000, branch_misses=10_000))
    v.wrmsr(LER_FROM, 0xFFFF_FFFF_8100_1234)
    v.wrmsr(LER_TO, 0xFFFF_FFFF_8100_5678)
    v.wrmsr(LER_INFO, 7)
    return v


def test_size_is_40_plus_24_per_entry() -> None:
    assert component_size(32) == 808 and component_size(8) == 232
    v = make_vcpu(ARCH_CPU, "arch_lbr")
    st = v.facilities["arch_lbr"]
    assert st.xsave_size() == len(st.xsaves()) == v.cpuid_table.get(0xD, 15)[0] == 808


def test_layout_matches_struct_arch_lbr_state() -> None:
    v = recorded()
    st = v.facilities["arch_lbr"]
    data = st.xsaves()
    ctl, depth, ler_from, ler_to, ler_info = struct.unpack_from("<5Q", data, 0)
    assert (ctl, depth) == (CTL_ALL, 32)
    assert (ler_from, ler_to, ler_info) == (0xFFFF_FFFF_8100_1234, 0xFFFF_FFFF_8100_5678, 7)
    recs = arch_records(v)
    for i in range(32):
        assert struct.unpack_from("<3Q", data, 0x28 + 24 * i) == recs[i]


def test_pack_unpack_round_trip() -> None:
    comp = ArchLbrComponent(1, 8, 2, 3, 4, tuple((i + 1, i + 2, i + 3) for i in range(8)))
    assert comp.size == 232
    assert ArchLbrComponent.unpack(comp.pack(), 8) == comp
    with pytest.raises(GuestFault):
        ArchLbrComponent.unpack(comp.pack()[:-1], 8)


def test_xrstors_with_matching_depth_restores_exactly() -> None:
    v = recorded()
    st = v.facilities["arch_lbr"]
    image = st.xsaves()
    before = arch_records(v)
    v.wrmsr(LBR_CTL, 0)
    v.wrmsr(LBR_DEPTH, 32)  # zeroes the records
    assert all(r == (0, 0, 0) for r in arch_records(v))
    st.xrstors(image)
    assert st.xsaves() == image
    assert arch_records(v) == before and v.rdmsr(LBR_CTL) == CTL_ALL


def test_xrstors_with_mismatched_depth_zeroes_records() -> None:
    v = recorded(options={"depth_rule": "any"})
    st = v.facilities["arch_lbr"]
    image = st.xsaves()  # saved at depth 32
    v.wrmsr(LBR_DEPTH, 16)
    st.xrstors(image)
    assert v.rdmsr(LBR_DEPTH) == 16, "XRSTORS does not load IA32_LBR_DEPTH"
    assert all(r == (0, 0, 0) for r in arch_records(v))
    # CTL and the LER MSRs are still restored
    assert v.rdmsr(LBR_CTL) == CTL_ALL and v.rdmsr(LER_FROM) == 0xFFFF_FFFF_8100_1234
    assert st.wipes == 1


def test_xrstors_of_the_init_configuration() -> None:
    v = recorded(options={"depth_rule": "any"}, guest_options={"depth": 24})
    st = v.facilities["arch_lbr"]
    st.xrstors(b"")
    assert v.rdmsr(LBR_DEPTH) == 24, "DEPTH keeps its value in the init configuration"
    assert v.rdmsr(LBR_CTL) == 0 and v.rdmsr(LER_FROM) == 0 and v.rdmsr(LER_INFO) == 0
    assert all(r == (0, 0, 0) for r in arch_records(v))
    assert not st.in_use


def test_xrstors_rejects_reserved_ctl_bits() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr")
    st = v.facilities["arch_lbr"]
    bad = ArchLbrComponent(ctl=1 << 30, depth=32, entries=((0, 0, 0),) * 32).pack()
    with pytest.raises(GuestFault):
        st.xrstors(bad)


def test_guest_xsaves_area_round_trip() -> None:
    v = recorded()
    v.wrmsr(0xDA0, XSTATE_LBR)  # IA32_XSS: XSAVES saves only what it enables (RFBM)
    area = v.xsaves(XSTATE_LBR)
    assert isinstance(area, XsaveArea)
    assert area.xstate_bv & XSTATE_LBR and len(area.components[15]) == 808
    before = arch_records(v)
    v.wrmsr(LBR_CTL, 0)
    v.wrmsr(LBR_DEPTH, 32)
    v.xrstors(area, XSTATE_LBR)
    assert arch_records(v) == before


def test_guest_xsaves_of_an_unused_component_leaves_xstate_bv_clear() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr")
    area = v.xsaves(XSTATE_LBR)
    assert not area.xstate_bv & XSTATE_LBR
    v.xrstors(area, XSTATE_LBR)  # restores the init configuration
    assert v.rdmsr(LBR_DEPTH) == 32


def test_xsaves_without_the_lbr_bit_saves_nothing() -> None:
    v = recorded()
    area = v.xsaves(0)
    assert 15 not in area.components


def test_ia32_xss_gates_the_lbr_component() -> None:
    """Issue 11: IA32_XSS exists when the guest CPUID advertises XSAVES (x86.c
    kvm_set_msr_common); unsupported bits #GP; XSAVES/XRSTORS use RFBM = mask & (XCR0 |
    IA32_XSS) (SDM Vol. 1 13.2, 13.11), so with XSS = 0 nothing of component 15 moves."""
    v = recorded()
    assert v.cpuid(0xD, 1)[0] & (1 << 3) and v.cpuid(0xD, 1)[2] & XSTATE_LBR
    assert v.rdmsr(0xDA0) == 0
    with pytest.raises(GuestFault):
        v.wrmsr(0xDA0, 1 << 14)  # not a supervisor component this guest supports
    before = arch_records(v)
    area = v.xsaves(XSTATE_LBR)
    assert 15 not in area.components and not area.xstate_bv
    v.wrmsr(0xDA0, XSTATE_LBR)
    assert v.rdmsr(0xDA0) == XSTATE_LBR
    area = v.xsaves(XSTATE_LBR)
    assert area.xstate_bv & XSTATE_LBR
    v.wrmsr(0xDA0, 0)
    v.wrmsr(LBR_DEPTH, 32)  # zeroes the records
    v.xrstors(area, XSTATE_LBR)  # RFBM = 0: nothing restored
    assert arch_records(v) != before
    v.wrmsr(0xDA0, XSTATE_LBR)
    v.xrstors(area, XSTATE_LBR)
    assert arch_records(v) == before
