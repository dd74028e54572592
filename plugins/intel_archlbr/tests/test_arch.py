"""Arch LBR CPUID, MSR rules and recording, through a Sapphire Rapids guest (facts §4)."""

from __future__ import annotations

from typing import Any

import pytest
from lbr_helpers import (
    AFROM0,
    AINFO0,
    ARCH_CPU,
    ATO0,
    CTL_ALL,
    DEBUGCTL,
    LBR_CTL,
    LBR_DEPTH,
    LER_FROM,
    LER_INFO,
    LER_TO,
    arch_records,
    make_host,
    make_vcpu,
)

from vpmu_core import ConfigError, GuestFault, GuestPmuConfig, Work


def branchy(v: Any, n: int = 200_000, cpl: int = 0) -> None:
    v.execute(Work(instructions=10 * n, branches=n, branch_misses=n // 10, cpl=cpl))


def br_type(info: int) -> int:
    return info >> 56 & 0xF


# ---- CPUID --------------------------------------------------------------------------------
def test_host_cpuid_enumerates_arch_lbr() -> None:
    host = make_host(ARCH_CPU, "arch_lbr")
    t = host.cpuid
    assert t.get(0x7, 0)[3] >> 19 & 1
    eax, ebx, ecx, _ = t.get(0x1C, 0)
    assert eax & 0xFF == 0b1111  # depths 8, 16, 24, 32
    assert ebx & 0x7 == 0x7 and ecx & 0x7 == 0x7
    eax1, _, ecx1, _ = t.get(0xD, 1)
    assert eax1 >> 3 & 1 and ecx1 >> 15 & 1  # XSAVES, IA32_XSS[15]
    assert t.get(0xD, 15)[0] == 40 + 24 * 32 == 808
    assert t.get(0xD, 15)[2] & 1  # supervisor component


def test_guest_cpuid_shows_only_the_host_depth_under_kvm_rule(arch_vcpu: Any) -> None:
    v = arch_vcpu
    assert v.cpuid_table.get(0x7, 0)[3] >> 19 & 1
    assert v.cpuid_table.get(0x1C, 0)[0] & 0xFF == 1 << 3  # only 32
    assert v.cpuid_table.get(0xD, 15)[0] == 808
    assert v.cpuid_table.get(0xD, 1)[2] >> 15 & 1


def test_guest_cpuid_shows_every_depth_under_any_rule() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr", options={"depth_rule": "any"})
    assert v.cpuid_table.get(0x1C, 0)[0] & 0xFF == 0b1111


def test_host_depth_option_changes_the_guest_depth() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr", options={"host_depth": 16})
    assert v.rdmsr(LBR_DEPTH) == 16
    assert v.cpuid_table.get(0x1C, 0)[0] & 0xFF == 1 << 1


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        make_host(ARCH_CPU, "arch_lbr", options={"depth_rule": "whatever"})
    with pytest.raises(ConfigError):
        make_host(ARCH_CPU, "arch_lbr", options={"host_depth": 12})
    with pytest.raises(ConfigError):
        make_host(ARCH_CPU, "arch_lbr", options={"deph": 8})


def test_facilities_attach_only_where_the_model_has_them() -> None:
    with pytest.raises(ConfigError):
        make_host(ARCH_CPU, "lbr")
    with pytest.raises(ConfigError):
        make_host("intel/icelake", "arch_lbr")


def test_arch_lbr_model_reports_no_legacy_lbr_format(arch_vcpu: Any) -> None:
    """No model-specific LBR on SPR: intel_arch leaves PERF_CAPABILITIES[5:0] 0 (facts §6:
    the value reported on Arch LBR parts was not found in the sources)."""
    assert arch_vcpu.rdmsr(0x345) & 0x3F == 0


# ---- LBR_CTL ------------------------------------------------------------------------------
def test_lbr_ctl_valid_mask(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(LBR_CTL, 0x7F000F)
    assert v.rdmsr(LBR_CTL) == 0x7F000F
    for bit in (4, 15, 23, 31, 63):
        with pytest.raises(GuestFault) as e:
            v.wrmsr(LBR_CTL, 1 << bit)
        assert e.value.vector == 13
    assert v.rdmsr(LBR_CTL) == 0x7F000F


def test_debugctl_has_no_lbr_bit_on_arch_lbr(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(DEBUGCTL, 1)  # discarded
    assert v.rdmsr(DEBUGCTL) == 0
    v.wrmsr(DEBUGCTL, 1 << 11)
    assert v.rdmsr(DEBUGCTL) == 1 << 11
    with pytest.raises(GuestFault):
        v.wrmsr(DEBUGCTL, 1 << 7)


# ---- LBR_DEPTH ----------------------------------------------------------------------------
def test_depth_host_only_rule(arch_vcpu: Any) -> None:
    v = arch_vcpu
    assert v.rdmsr(LBR_DEPTH) == 32
    v.wrmsr(LBR_DEPTH, 32)
    for bad in (0, 7, 8, 16, 24, 33, 40, 64):
        with pytest.raises(GuestFault):
            v.wrmsr(LBR_DEPTH, bad)
    assert v.rdmsr(LBR_DEPTH) == 32


def test_depth_any_rule_accepts_every_supported_depth() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr", options={"depth_rule": "any"})
    for d in (8, 16, 24, 32):
        v.wrmsr(LBR_DEPTH, d)
        assert v.rdmsr(LBR_DEPTH) == d
    for bad in (0, 12, 40, 64):
        with pytest.raises(GuestFault):
            v.wrmsr(LBR_DEPTH, bad)


def test_host_depth_register_accepts_every_supported_depth() -> None:
    host = make_host(ARCH_CPU, "arch_lbr")
    port = host.cpus[0].port
    assert port.rdmsr(LBR_DEPTH) == 32
    port.wrmsr(LBR_DEPTH, 8)
    assert port.rdmsr(LBR_DEPTH) == 8


def test_any_depth_write_zeroes_every_record(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(LBR_CTL, CTL_ALL)
    branchy(v)
    assert all(r[0] for r in arch_records(v))
    v.wrmsr(LBR_CTL, 0)
    v.wrmsr(LBR_DEPTH, 32)  # the same value still resets
    assert all(r == (0, 0, 0) for r in arch_records(v))
    assert v.rdmsr(LBR_DEPTH) == 32


def test_guest_depth_from_vm_config() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr", options={"depth_rule": "any"}, guest_options={"depth": 16})
    assert v.rdmsr(LBR_DEPTH) == 16
    with pytest.raises(ConfigError):
        make_vcpu(ARCH_CPU, "arch_lbr", guest_options={"depth": 16})  # KVM rule: host depth only


# ---- records -------------------------------------------------------------------------------
def test_record_index_at_or_beyond_depth_is_gp() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr", options={"depth_rule": "any"}, guest_options={"depth": 16})
    for base in (AFROM0, ATO0, AINFO0):
        v.rdmsr(base + 15)
        with pytest.raises(GuestFault):
            v.rdmsr(base + 16)
        with pytest.raises(GuestFault):
            v.wrmsr(base + 16, 0)


def test_depth_probe_by_gp_finds_the_depth(arch_vcpu: Any) -> None:
    v = arch_vcpu
    depth = 0
    while True:
        try:
            v.wrmsr(AFROM0 + depth, 0x7F00_0000_0000)
        except GuestFault:
            break
        depth += 1
    assert depth == v.rdmsr(LBR_DEPTH) == 32


def test_record_and_ler_msrs_read_back(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(AFROM0 + 5, 0xFFFF_FFFF_8100_0010)
    v.wrmsr(ATO0 + 5, 0x5555_0000)
    v.wrmsr(AINFO0 + 5, 5 << 56 | 1 << 60 | 42)
    assert arch_records(v)[5] == (0xFFFF_FFFF_8100_0010, 0x5555_0000, 5 << 56 | 1 << 60 | 42)
    with pytest.raises(GuestFault):
        v.wrmsr(ATO0, 1 << 50)  # non-canonical
    for msr, val in ((LER_FROM, 0x1000), (LER_TO, 0x2000), (LER_INFO, 1 << 63 | 3)):
        v.wrmsr(msr, val)
        assert v.rdmsr(msr) == val


def test_records_non_zero_after_a_branchy_run(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(LBR_CTL, CTL_ALL)
    branchy(v)
    recs = arch_records(v)
    assert len(recs) == 32
    assert all(f and t and info & 0xFFFF and info >> 60 & 1 for f, t, info in recs)
    assert {br_type(info) for _, _, info in recs} <= {0, 1, 2, 3, 4, 5, 8}


def test_capture_semantics_cpl_bits() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr")
    v.wrmsr(LBR_CTL, CTL_ALL & ~(1 << 1))  # USR only
    branchy(v, cpl=0)
    assert all(r == (0, 0, 0) for r in arch_records(v))
    v.wrmsr(LBR_CTL, CTL_ALL)
    branchy(v, cpl=0)
    assert all(r[0] for r in arch_records(v))


def test_capture_semantics_branch_classes() -> None:
    v = make_vcpu(ARCH_CPU, "arch_lbr")
    v.wrmsr(LBR_CTL, 0x7 | 1 << 21)  # returns only
    branchy(v)
    recs = arch_records(v)
    assert all(r[0] for r in recs) and {br_type(i) for _, _, i in recs} == {5}
    v.wrmsr(LBR_DEPTH, 32)
    v.wrmsr(LBR_CTL, 0x7)  # no branch class captured
    branchy(v)
    assert all(r == (0, 0, 0) for r in arch_records(v))


def test_call_stack_mode_keeps_only_calls(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(LBR_CTL, 0xF | 1 << 19 | 1 << 20 | 1 << 21)  # CALL_STACK, calls and returns
    branchy(v)
    recs = [r for r in arch_records(v) if r[0]]
    assert recs and {br_type(i) for _, _, i in recs} <= {3, 4}


def test_clearing_lbren_freezes_records(arch_vcpu: Any) -> None:
    v = arch_vcpu
    v.wrmsr(LBR_CTL, CTL_ALL)
    branchy(v)
    v.wrmsr(LBR_CTL, CTL_ALL & ~1)
    before = arch_records(v)
    branchy(v)
    assert arch_records(v) == before


def test_entry_zero_is_the_youngest_branch() -> None:
    """Two runs that differ only in a short final span differ in entry 0 first."""
    v = make_vcpu(ARCH_CPU, "arch_lbr", seed=9)
    v.wrmsr(LBR_CTL, CTL_ALL)
    branchy(v)
    old = arch_records(v)
    v.execute(Work(instructions=100, branches=1))
    new = arch_records(v)
    assert new[1:] == old[:-1] and new[0] != old[0]


def test_guest_lbr_disabled_by_config_hides_arch_lbr() -> None:
    host = make_host(ARCH_CPU, "arch_lbr")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(lbr=False)).vcpus[0]
    assert not v.cpuid_table.get(0x7, 0)[3] >> 19 & 1
    with pytest.raises(GuestFault):
        v.rdmsr(LBR_CTL)
