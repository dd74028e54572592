"""Legacy LBR register rules and recording, through a guest's RDMSR/WRMSR (facts §3)."""

from __future__ import annotations

from typing import Any

import pytest
from lbr_helpers import DEBUGCTL, FROM0, INFO0, LBR_SELECT, LBR_TOS, LER_FROM, LER_TO, TO0, legacy_records, make_vcpu

from vpmu_core import GuestFault, Work

KERNEL_HALF = 0xFFFF_8000_0000_0000


def branchy(v: Any, n: int = 200_000, cpl: int = 0) -> None:
    v.execute(Work(instructions=10 * n, branches=n, branch_misses=n // 20, cpl=cpl))


def test_perf_capabilities_reports_lbr_format_5(legacy_vcpu: Any) -> None:
    """PERF_CAPABILITIES[5:0] is intel_arch's: Skylake/Ice Lake use LBR_FORMAT_INFO (5)."""
    assert legacy_vcpu.rdmsr(0x345) & 0x3F == 5
    assert legacy_vcpu.host.cpus[0].port.rdmsr(0x345) & 0x3F == 5


def test_debugctl_guest_rule(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(DEBUGCTL, 1 | 1 << 11)  # LBR | FREEZE_LBRS_ON_PMI
    assert v.rdmsr(DEBUGCTL) == 1 | 1 << 11
    v.wrmsr(DEBUGCTL, 1 << 1)  # BTF: accepted and dropped, as KVM does
    assert v.rdmsr(DEBUGCTL) == 0
    for bit in (2, 6, 7, 12, 14, 20, 63):
        with pytest.raises(GuestFault) as e:
            v.wrmsr(DEBUGCTL, 1 << bit)
        assert e.value.vector == 13
    assert v.rdmsr(DEBUGCTL) == 0  # a faulting write has no effect


def test_debugctl_host_takes_architectural_bits(legacy_vcpu: Any) -> None:
    port = legacy_vcpu.host.cpus[0].port
    port.wrmsr(DEBUGCTL, 1 | 1 << 7 | 1 << 12)
    assert port.rdmsr(DEBUGCTL) == 1 | 1 << 7 | 1 << 12
    with pytest.raises(GuestFault):
        port.wrmsr(DEBUGCTL, 1 << 30)


def test_lbr_select_valid_mask_and_callstack_bit(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(LBR_SELECT, 0x3FF)
    assert v.rdmsr(LBR_SELECT) == 0x3FF
    with pytest.raises(GuestFault):
        v.wrmsr(LBR_SELECT, 1 << 10)
    assert v.rdmsr(LBR_SELECT) == 0x3FF


def test_tos_is_guest_writable_below_depth(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(LBR_TOS, 31)
    assert v.rdmsr(LBR_TOS) == 31
    with pytest.raises(GuestFault):
        v.wrmsr(LBR_TOS, 32)


def test_depth_probe_by_gp_finds_the_model_depth(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    depth = 0
    while True:
        try:
            v.wrmsr(FROM0 + depth, 0xFFFF_FFFF_8100_0000)
        except GuestFault as e:
            assert e.vector == 13
            break
        depth += 1
    assert depth == 32
    for msr in (TO0 + 32, INFO0 + 32, 0x40, 0x60, 0x1500):  # beyond depth, Core2 layout, Arch LBR
        with pytest.raises(GuestFault):
            v.rdmsr(msr)


def test_records_are_readable_and_writable(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(FROM0 + 3, 0x7FFF_0000_1000)
    v.wrmsr(TO0 + 3, 0xFFFF_FFFF_8100_2000)
    v.wrmsr(INFO0 + 3, 1 << 63 | 77)
    assert (v.rdmsr(FROM0 + 3), v.rdmsr(TO0 + 3), v.rdmsr(INFO0 + 3)) == (
        0x7FFF_0000_1000,
        0xFFFF_FFFF_8100_2000,
        1 << 63 | 77,
    )
    with pytest.raises(GuestFault):
        v.wrmsr(FROM0, 0x0000_8000_0000_0000)  # non-canonical
    v.wrmsr(LER_FROM, 0x4000)
    v.wrmsr(LER_TO, 0x5000)
    assert (v.rdmsr(LER_FROM), v.rdmsr(LER_TO)) == (0x4000, 0x5000)


def test_records_non_zero_after_a_branchy_run(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    assert all(r == (0, 0, 0) for r in legacy_records(v))
    v.wrmsr(DEBUGCTL, 1)
    branchy(v)
    recs = legacy_records(v)
    assert all(f and t and info & 0xFFFF for f, t, info in recs)
    assert all(f >= KERNEL_HALF and t >= KERNEL_HALF for f, t, _ in recs)  # CPL 0 work
    assert any(info >> 63 for _, _, info in recs) or True  # mispredicts are sampled (5%)
    v.cpl = 3
    branchy(v, cpl=3)
    v.cpl = 0
    assert all(f < KERNEL_HALF and t < KERNEL_HALF for f, t, _ in legacy_records(v))


def test_clearing_the_enable_freezes_the_records(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(DEBUGCTL, 1)
    branchy(v)
    v.wrmsr(DEBUGCTL, 0)
    before = legacy_records(v)
    tos = v.rdmsr(LBR_TOS)
    branchy(v)
    assert legacy_records(v) == before and v.rdmsr(LBR_TOS) == tos


def test_cpl_filter_suppresses(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(LBR_SELECT, 1)  # CPL_EQ_0: do not capture ring 0
    v.wrmsr(DEBUGCTL, 1)
    branchy(v)
    assert all(r == (0, 0, 0) for r in legacy_records(v))
    v.wrmsr(LBR_SELECT, 2)  # CPL_NEQ_0: ring 0 captured again
    branchy(v)
    assert all(r[0] for r in legacy_records(v))


def test_branch_type_filter_suppresses_everything(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(LBR_SELECT, 0x1FC)  # every branch class suppressed
    v.wrmsr(DEBUGCTL, 1)
    branchy(v)
    assert all(r == (0, 0, 0) for r in legacy_records(v))


def test_branch_type_filter_changes_what_is_recorded() -> None:
    def run(select: int) -> list[tuple[int, int, int]]:
        v = make_vcpu("intel/icelake", "lbr", seed=3)
        v.wrmsr(LBR_SELECT, select)
        v.wrmsr(DEBUGCTL, 1)
        branchy(v)
        return legacy_records(v)

    every, no_cond = run(0), run(1 << 2)
    assert every != no_cond and all(r[0] for r in no_cond)


def test_call_stack_mode_is_deterministic_and_pushes_calls() -> None:
    """Call-stack mode: calls push at TOS, returns pop (the slot above TOS keeps its value,
    as the hardware ring does); a balanced call/return stream leaves old slots untouched."""

    def run() -> tuple[int, list[tuple[int, int, int]]]:
        v = make_vcpu("intel/icelake", "lbr", seed=5)
        # call stack: suppress JCC, indirect/relative jumps and far branches (Linux's setting)
        v.wrmsr(LBR_SELECT, 1 << 9 | 1 << 2 | 1 << 6 | 1 << 7 | 1 << 8)
        v.wrmsr(DEBUGCTL, 1)
        branchy(v)
        return v.rdmsr(LBR_TOS), legacy_records(v)

    a, b = run(), run()
    assert a == b
    tos, recs = a
    assert recs[tos][0], "the top of the call stack is a recorded call"
    assert 0 < sum(1 for r in recs if r[0]) <= 32


def test_same_seed_same_records_other_seed_other_records() -> None:
    def run(seed: int) -> list[tuple[int, int, int]]:
        v = make_vcpu("intel/skylake", "lbr", seed=seed)
        v.wrmsr(DEBUGCTL, 1)
        branchy(v)
        return legacy_records(v)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_freeze_on_pmi_sets_lbr_frz_and_stops_recording(legacy_vcpu: Any) -> None:
    """v4 freeze: a PMI sets GLOBAL_STATUS.LBR_FRZ (58); records stop until software clears it."""
    v = legacy_vcpu
    v.wrmsr(0x186, 0x00C4 | 1 << 16 | 1 << 17 | 1 << 20 | 1 << 22)  # branches, USR|OS|INT|EN
    v.wrmsr(0x4C1, (1 << 48) - 50_000)  # overflow after 50k branches (full-width alias)
    v.wrmsr(DEBUGCTL, 1 | 1 << 11)
    v.wrmsr(0x38F, 1)
    branchy(v, n=100_000)
    assert v.rdmsr(0x38E) >> 58 & 1, "LBR_FRZ set by the PMI"
    assert v.rdmsr(DEBUGCTL) & 1, "v4 freeze keeps DEBUGCTL.LBR"
    frozen = legacy_records(v)
    branchy(v, n=100_000)
    assert legacy_records(v) == frozen
    v.wrmsr(0x390, 1 << 58 | 1)  # GLOBAL_OVF_CTRL: clear LBR_FRZ and the overflow
    assert not v.rdmsr(0x38E) >> 58 & 1
    branchy(v, n=1_000)
    assert legacy_records(v) != frozen


def test_without_freeze_bit_a_pmi_does_not_freeze(legacy_vcpu: Any) -> None:
    v = legacy_vcpu
    v.wrmsr(0x186, 0x00C4 | 1 << 16 | 1 << 17 | 1 << 20 | 1 << 22)
    v.wrmsr(0x4C1, (1 << 48) - 50_000)
    v.wrmsr(DEBUGCTL, 1)
    v.wrmsr(0x38F, 1)
    branchy(v, n=100_000)
    assert not v.rdmsr(0x38E) >> 58 & 1
    before = legacy_records(v)
    branchy(v, n=1_000)
    assert legacy_records(v) != before


def test_lbr_off_in_the_guest_config_hides_the_facility() -> None:
    from lbr_helpers import make_host

    from vpmu_core import GuestPmuConfig

    host = make_host("intel/icelake", "lbr")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(lbr=False)).vcpus[0]
    assert "lbr" not in v.facilities
    # DEBUGCTL still exists: LBR is dropped (reads 0), FREEZE_LBRS_ON_PMI #GPs without a
    # guest LBR (vmx_is_valid_debugctl / vmx_get_supported_debugctl)
    v.wrmsr(DEBUGCTL, 1)
    assert v.rdmsr(DEBUGCTL) == 0
    with pytest.raises(GuestFault):
        v.wrmsr(DEBUGCTL, 1 << 11)
    with pytest.raises(GuestFault):
        v.rdmsr(0x1C9)  # no LBR_TOS
    assert v.rdmsr(0x345) & 0x3F == 0
