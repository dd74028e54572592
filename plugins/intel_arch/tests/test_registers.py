"""Register rules of the Intel arch PMU, physical and guest-visible (one test per rule)."""

from __future__ import annotations

import pytest
from vpmu_intel_arch.events import EVTSEL_ANY, EVTSEL_EN, EVTSEL_OS, EVTSEL_USR
from vpmu_intel_arch.models import IntelCpuModel, make_skylake
from vpmu_intel_arch.pmu import (
    MSR_A_PMC0,
    MSR_FIXED_CTR0,
    MSR_FIXED_CTR_CTRL,
    MSR_GLOBAL_CTRL,
    MSR_GLOBAL_INUSE,
    MSR_GLOBAL_OVF_CTRL,
    MSR_GLOBAL_STATUS,
    MSR_GLOBAL_STATUS_SET,
    MSR_PERF_CAPABILITIES,
    MSR_PERF_METRICS,
    MSR_PERFEVTSEL0,
    MSR_PMC0,
    RDPMC_FIXED,
)

from vpmu_core.errors import GuestFault
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.pmc import FIXED_BASE

GUEST = GuestPmuConfig()


def _gp(fn, *args) -> None:  # noqa: ANN001
    with pytest.raises(GuestFault) as ei:
        fn(*args)
    assert ei.value.vector == 13


def test_evtsel_high_bits_reserved(model: IntelCpuModel) -> None:
    for pmu in (model.make_pmu(None), model.make_pmu(GUEST)):
        pmu.wrmsr(MSR_PERFEVTSEL0, 0xFFFFFFFF & ~EVTSEL_ANY)  # every low bit but ANY is valid
        for bit in range(32, 64):
            _gp(pmu.wrmsr, MSR_PERFEVTSEL0, 1 << bit)


def test_any_bit_reserved_for_guests_and_deprecated_v5(model: IntelCpuModel) -> None:
    _gp(model.make_pmu(GUEST).wrmsr, MSR_PERFEVTSEL0, EVTSEL_ANY)  # KVM reserved_bits
    phys = model.make_pmu(None)
    if model.data.anythread:  # Skylake v4: AnyThread valid on hardware
        phys.wrmsr(MSR_PERFEVTSEL0, EVTSEL_ANY | EVTSEL_EN | 0xC0)
        assert phys.gp[0].exotic
    else:  # v5 with CPUID.0AH:EDX[15]
        _gp(phys.wrmsr, MSR_PERFEVTSEL0, EVTSEL_ANY)


def test_legacy_pmc_sign_extends_bit31(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    mask = (1 << model.caps.gp_width) - 1
    pmu.wrmsr(MSR_PMC0, 0x8000_0001)
    assert pmu.rdmsr(MSR_PMC0) == (mask & ~0x7FFF_FFFF) | 1
    pmu.wrmsr(MSR_PMC0, 0x1_7FFF_FFFF)  # bits 63:32 ignored, bit 31 clear
    assert pmu.rdmsr(MSR_PMC0) == 0x7FFF_FFFF


def test_host_initiated_legacy_write_is_whole(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    pmu.restore_snapshot({MSR_PMC0: 0x1234_8000_0000})
    assert pmu.rdmsr(MSR_PMC0) == 0x1234_8000_0000


def test_full_width_alias_width_rule_and_same_counter(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    width = model.caps.gp_width
    pmu.wrmsr(MSR_A_PMC0 + 1, (1 << width) - 1)
    assert pmu.rdmsr(MSR_PMC0 + 1) == (1 << width) - 1  # both aliases read one counter
    _gp(pmu.wrmsr, MSR_A_PMC0 + 1, 1 << width)


def test_full_width_alias_absent_without_perf_cap13(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(full_width_writes=False))
    assert not pmu.rdmsr(MSR_PERF_CAPABILITIES) & (1 << 13)
    _gp(pmu.rdmsr, MSR_A_PMC0)
    _gp(pmu.wrmsr, MSR_A_PMC0, 0)
    assert pmu.counter_msrs(pmu.gp[0]) == (MSR_PMC0,)


def test_fixed_counter_write_masked_not_sign_extended(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    pmu.wrmsr(MSR_FIXED_CTR0, 0x8000_0000)
    assert pmu.rdmsr(MSR_FIXED_CTR0) == 0x8000_0000


def test_fixed_ctrl_guest_allows_0xb_per_existing_nibble(model: IntelCpuModel) -> None:
    n = model.caps.fixed_counters
    pmu = model.make_pmu(GUEST)
    ok = sum(0xB << (4 * i) for i in range(n))
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, ok)
    assert pmu.rdmsr(MSR_FIXED_CTR_CTRL) == ok
    for i in range(n):
        _gp(pmu.wrmsr, MSR_FIXED_CTR_CTRL, 0x4 << (4 * i))  # AnyThread rejected by KVM
    _gp(pmu.wrmsr, MSR_FIXED_CTR_CTRL, 0x1 << (4 * n))  # counter n does not exist


def test_fixed_ctrl_follows_guest_fixed_count(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(fixed_counters=1))
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0xB)
    _gp(pmu.wrmsr, MSR_FIXED_CTR_CTRL, 0xB0)
    _gp(pmu.rdmsr, MSR_FIXED_CTR0 + 1)


def test_global_ctrl_reset_and_reserved(model: IntelCpuModel) -> None:
    for pmu in (model.make_pmu(None), model.make_pmu(GUEST)):
        n_gp, n_fx = len(pmu.gp), len(pmu.fixed)
        assert pmu.rdmsr(MSR_GLOBAL_CTRL) == (1 << n_gp) - 1  # all GP enable bits at reset
        valid = ((1 << n_gp) - 1) | (((1 << n_fx) - 1) << 32)
        pmu.wrmsr(MSR_GLOBAL_CTRL, valid)
        _gp(pmu.wrmsr, MSR_GLOBAL_CTRL, 1 << n_gp)
        _gp(pmu.wrmsr, MSR_GLOBAL_CTRL, 1 << (32 + n_fx))
    # bit 48 (EN_PERF_METRICS) only where perf metrics exist: physical ICL/SPR, never guests
    _gp(model.make_pmu(GUEST).wrmsr, MSR_GLOBAL_CTRL, 1 << 48)
    phys = model.make_pmu(None)
    if model.data.perf_metrics:
        phys.wrmsr(MSR_GLOBAL_CTRL, 1 << 48)
    else:
        _gp(phys.wrmsr, MSR_GLOBAL_CTRL, 1 << 48)


def test_global_status_read_only_except_host_initiated(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    _gp(pmu.wrmsr, MSR_GLOBAL_STATUS, 1)
    pmu.restore_snapshot({MSR_GLOBAL_STATUS: 0b11})
    assert pmu.rdmsr(MSR_GLOBAL_STATUS) == 0b11
    _gp(model.make_pmu(None).wrmsr, MSR_GLOBAL_STATUS, 1)


def test_ovf_ctrl_write_one_to_clear_reads_zero(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    pmu.set_global_status(0b101 | 1 << 32)
    pmu.wrmsr(MSR_GLOBAL_OVF_CTRL, 0b001 | 1 << 32)
    assert pmu.rdmsr(MSR_GLOBAL_STATUS) == 0b100
    assert pmu.rdmsr(MSR_GLOBAL_OVF_CTRL) == 0
    _gp(pmu.wrmsr, MSR_GLOBAL_OVF_CTRL, 1 << len(pmu.gp))  # shares STATUS reserved bits


def test_v4_status_set_and_inuse(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    pmu.wrmsr(MSR_GLOBAL_STATUS_SET, 0b10)
    assert pmu.rdmsr(MSR_GLOBAL_STATUS) == 0b10
    assert pmu.rdmsr(MSR_GLOBAL_STATUS_SET) == 0
    _gp(pmu.wrmsr, MSR_GLOBAL_INUSE, 0)
    assert pmu.rdmsr(MSR_GLOBAL_INUSE) == 0
    pmu.wrmsr(MSR_PERFEVTSEL0 + 1, 0xC0)  # event code set, not even enabled
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0x2 << 4)  # fixed1 USR
    assert pmu.rdmsr(MSR_GLOBAL_INUSE) == 0b10 | 1 << 33
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0x8)  # PMI bit only: PMI_InUse, fixed0 not in use
    assert pmu.rdmsr(MSR_GLOBAL_INUSE) == 0b10 | 1 << 63


def test_v2_v3_have_no_status_set_inuse(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(version=3))
    assert pmu.has_msr(MSR_GLOBAL_CTRL)
    _gp(pmu.rdmsr, MSR_GLOBAL_STATUS_SET)
    _gp(pmu.rdmsr, MSR_GLOBAL_INUSE)
    assert set(pmu.global_msrs()) == {"ctrl", "status", "status_clr"}


def test_v1_has_no_global_msrs_nor_fixed(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(version=1))
    for msr in (MSR_GLOBAL_CTRL, MSR_GLOBAL_STATUS, MSR_GLOBAL_OVF_CTRL, MSR_FIXED_CTR_CTRL, MSR_FIXED_CTR0):
        _gp(pmu.rdmsr, msr)
        _gp(pmu.wrmsr, msr, 0)
    assert pmu.global_msrs() == {} and pmu.fixed == []
    _gp(pmu.rdpmc, RDPMC_FIXED)
    # v1 counts with EN alone
    pmu.wrmsr(MSR_PERFEVTSEL0, 0xC0 | EVTSEL_EN | EVTSEL_OS)
    assert pmu.counting(False) == [pmu.gp[0]]


def test_version0_guest_has_no_pmu(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(version=0, lbr=False))
    # only IA32_DEBUGCTL, which KVM handles for every VMX guest (vmx_set_msr), PMU or not
    assert pmu.msr_indexes == [0x1D9]
    _gp(pmu.rdpmc, 0)
    assert model.cpuid_table(GuestPmuConfig(version=0)).get(0xA) == (0, 0, 0, 0)


def test_perf_capabilities_read_only_and_pdcm(model: IntelCpuModel) -> None:
    for pmu in (model.make_pmu(None), model.make_pmu(GUEST)):
        caps = pmu.rdmsr(MSR_PERF_CAPABILITIES)
        assert caps & (1 << 13)
        _gp(pmu.wrmsr, MSR_PERF_CAPABILITIES, caps)
    guest = model.make_pmu(GUEST)
    guest.restore_snapshot({MSR_PERF_CAPABILITIES: guest.rdmsr(MSR_PERF_CAPABILITIES)})  # migration: allowed
    # PDCM (CPUID.1:ECX[15]) enumerates it; a PMU-less guest has neither
    assert model.cpuid_table(GUEST).get(1)[2] & (1 << 15)
    assert not model.cpuid_table(GuestPmuConfig(version=0)).get(1)[2] & (1 << 15)


def test_guest_perf_caps_hide_perf_metrics(model: IntelCpuModel) -> None:
    guest_caps = model.make_pmu(GUEST).rdmsr(MSR_PERF_CAPABILITIES)
    assert not guest_caps & (1 << 15)
    assert bool(model.make_pmu(None).rdmsr(MSR_PERF_CAPABILITIES) & (1 << 15)) == model.data.perf_metrics


def test_perf_metrics_msr_presence(model: IntelCpuModel) -> None:
    assert model.make_pmu(None).has_msr(MSR_PERF_METRICS) == model.data.perf_metrics
    assert not model.make_pmu(GUEST).has_msr(MSR_PERF_METRICS)


def test_counters_past_enumerated_gp(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig(gp_counters=2))
    for msr in (MSR_PMC0 + 2, MSR_A_PMC0 + 2, MSR_PERFEVTSEL0 + 2):
        _gp(pmu.rdmsr, msr)
        _gp(pmu.wrmsr, msr, 0)
    _gp(pmu.rdpmc, 2)
    pmu.rdpmc(1)


def test_rdpmc_encodings(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    pmu.wrmsr(MSR_A_PMC0 + 1, 0x1234)
    pmu.wrmsr(MSR_FIXED_CTR0 + 2, 0x5678)
    assert pmu.rdpmc(1) == 0x1234
    assert pmu.rdpmc(RDPMC_FIXED | 2) == 0x5678
    _gp(pmu.rdpmc, (1 << 31) | 1)  # "fast" read
    _gp(pmu.rdpmc, RDPMC_FIXED | len(pmu.fixed))
    _gp(pmu.rdpmc, len(pmu.gp))
    _gp(pmu.rdpmc, 1 << 29)  # perf metrics read: not exposed to guests
    assert [pmu.rdpmc(pmu.rdpmc_ecx(p)) for p in (pmu.gp[1], pmu.fixed[2])] == [0x1234, 0x5678]


def test_rdpmc_perf_metrics_on_hardware(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    if model.data.perf_metrics:
        assert pmu.rdpmc(1 << 29) == pmu.rdmsr(MSR_PERF_METRICS)
    else:
        _gp(pmu.rdpmc, 1 << 29)


def test_roles(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    assert pmu.eventsel_msr(pmu.gp[3]) == MSR_PERFEVTSEL0 + 3
    assert pmu.eventsel_msr(pmu.fixed[0]) is None
    assert pmu.counter_msrs(pmu.gp[2]) == (MSR_A_PMC0 + 2, MSR_PMC0 + 2)
    assert pmu.counter_msrs(pmu.fixed[1]) == (MSR_FIXED_CTR0 + 1,)
    assert pmu.fixed_ctrl_msr() == MSR_FIXED_CTR_CTRL
    assert MSR_FIXED_CTR_CTRL in pmu.control_msrs() and MSR_PERFEVTSEL0 in pmu.control_msrs()
    assert pmu.global_msrs()["status_clr"] == MSR_GLOBAL_OVF_CTRL
    assert pmu.rdpmc_ecx(pmu.fixed[1]) == RDPMC_FIXED | 1
    assert pmu.fixed[0].idx == FIXED_BASE
    assert type(pmu).atomic_global_ctrl_switch is True


def test_control_write_notifies_changed_counters(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GUEST)
    seen: list[int] = []
    pmu.control_listeners.append(seen.append)
    pmu.wrmsr(MSR_PERFEVTSEL0 + 2, 0xC0 | EVTSEL_EN | EVTSEL_USR)
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0x3 << 4)
    reset = pmu.rdmsr(MSR_GLOBAL_CTRL)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0b100)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0b100)  # unchanged: no notification
    assert seen == [1 << 2, 1 << 33, reset ^ 0b100]


def test_snapshot_restore_roundtrip(model: IntelCpuModel) -> None:
    a = model.make_pmu(GUEST)
    a.wrmsr(MSR_PERFEVTSEL0, 0xC4 | EVTSEL_EN | EVTSEL_OS)
    a.wrmsr(MSR_A_PMC0, 12345)
    a.wrmsr(MSR_FIXED_CTR_CTRL, 0xB)
    a.wrmsr(MSR_GLOBAL_CTRL, 1 | 1 << 32)
    a.set_global_status(1 << 32)
    b = model.make_pmu(GUEST)
    b.restore_snapshot(a.snapshot())
    assert b.snapshot() == a.snapshot()


def test_skylake_smt_option_counts() -> None:
    assert len(make_skylake({}).make_pmu(None).gp) == 4
    assert len(make_skylake({"smt": "off"}).make_pmu(None).gp) == 8
