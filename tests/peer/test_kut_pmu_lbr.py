"""kvm-unit-tests `x86/pmu_lbr.c`, replayed through the public API (DESIGN §5; the guest side
is tests/peer/guest.py) -> `test_kut_pmu_lbr_*`."""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu
from tests.peer.guest import (
    GP_VECTOR,
    MODES,
    MSR_IA32_DEBUGCTLMSR,
    MSR_IA32_PERF_CAPABILITIES,
    MSR_LBR_CORE_FROM,
    MSR_LBR_CORE_TO,
    MSR_LBR_NHM_FROM,
    MSR_LBR_NHM_TO,
    MSR_LBR_SELECT,
    MSR_LBR_TOS,
    PMU_CAP_LBR_FMT,
    Report,
    faults,
    make_vcpu,
    make_vcpu_or_skip,
)

MAX_NUM_LBR_ENTRY = 32
DEBUGCTLMSR_LBR = 1


def kut_pmu_lbr_main(v: Any, report: Report) -> None:
    eax = v.cpuid(10, 0)[0]
    perf_cap = v.rdmsr(MSR_IA32_PERF_CAPABILITIES) if v.cpuid(1, 0)[2] & (1 << 15) else 0
    if not eax & 0xFF:
        report(True, "skip: No pmu is detected!")
        return
    if not perf_cap & PMU_CAP_LBR_FMT:
        report(True, "skip: No LBR is detected!")
        return
    lbr_from, lbr_to = MSR_LBR_CORE_FROM, MSR_LBR_CORE_TO

    def init_lbr_gp(index: int) -> bool:
        def init() -> None:
            v.wrmsr(lbr_from + index, 0)
            v.wrmsr(lbr_to + index, 0)

        return faults(init) == GP_VECTOR

    if init_lbr_gp(0):
        lbr_from, lbr_to = MSR_LBR_NHM_FROM, MSR_LBR_NHM_TO
    if init_lbr_gp(0):
        report(True, "skip: LBR on this platform is not supported!")
        return
    v.wrmsr(MSR_LBR_SELECT, 0)
    v.wrmsr(MSR_LBR_TOS, 0)
    depth = 0
    while depth < MAX_NUM_LBR_ENTRY and not init_lbr_gp(depth):
        depth += 1
    report(depth > 0, "The number of guest LBR entries is good.", f"max={depth}")
    report(depth == 32, "exact: Skylake/Ice Lake depth 32 (facts §3.3)", f"max={depth}")
    v.wrmsr(MSR_IA32_DEBUGCTLMSR, DEBUGCTLMSR_LBR)
    # lbr_test(): a loop with a call, a return and conditional branches. The model records
    # every branch, so TOS ends at (branches mod depth): a multiple of 32 would read 0 and
    # fail the suite's TOS check exactly as hardware would.
    v.execute(vpmu.Work(instructions=2_000_000, branches=400_003, branch_misses=4_000))
    v.wrmsr(MSR_IA32_DEBUGCTLMSR, 0)
    report(v.rdmsr(MSR_LBR_TOS) != 0, "The guest LBR MSR_LBR_TOS value is good.")
    i = 0
    while i < depth and v.rdmsr(lbr_to + i) and v.rdmsr(lbr_from + i):
        i += 1
    report(i == depth, "The guest LBR FROM_IP/TO_IP values are good.", f"{i} of {depth}")


LBR_CONFIGS: dict[str, tuple[str, str, vpmu.GuestPmuConfig, dict[str, Any], bool]] = {
    # id: (cpu, mode, guest config, mode options, does the guest get LBRs)
    "emulated-icelake": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(), {}, True),
    "emulated-skylake": ("intel/skylake", "emulated", vpmu.GuestPmuConfig(), {}, True),
    "emulated-icelake-nolbr": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(lbr=False), {}, False),
    "emulated-icelake-v0": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(version=0), {}, False),
    # the merged mediated vPMU gives guests no LBR (v6 17/44-18/44): the suite skips
    "mediated-icelake": ("intel/icelake", "mediated", vpmu.GuestPmuConfig(), {}, False),
    "mediated-icelake-passthrough": (
        "intel/icelake",
        "mediated",
        vpmu.GuestPmuConfig(),
        {"facilities": "passthrough"},
        True,
    ),
}


@pytest.mark.parametrize("config", sorted(LBR_CONFIGS))
def test_kut_pmu_lbr(config: str) -> None:
    cpu, mode, pmu, options, has_lbr = LBR_CONFIGS[config]
    report = Report()
    kut_pmu_lbr_main(make_vcpu(cpu, mode, pmu, facilities=("lbr",), mode_options=options), report)
    assert not report.failures(), report.failures()
    skipped = any(n.startswith("skip") for n, _, _ in report.lines)
    assert skipped != has_lbr, report.lines


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_kut_pmu_lbr_without_the_facility_skips(cpu: str, mode: str) -> None:
    """Issue 11: a composition without the LBR facility gives the guest no LBR MSRs, so
    PERF_CAPABILITIES[5:0] must be 0 (vmx_get_perf_capabilities) and pmu_lbr.c skips
    instead of failing on LBR_TOS/FROM #GPs; its DEBUGCTL.LBR writes are dropped, not #GP
    (vmx_is_valid_debugctl)."""
    report = Report()
    v = make_vcpu_or_skip(cpu, mode)
    kut_pmu_lbr_main(v, report)
    assert not report.failures(), report.failures()
    assert any(n.startswith("skip: No LBR") for n, _, _ in report.lines), report.lines
    assert faults(v.wrmsr, MSR_IA32_DEBUGCTLMSR, DEBUGCTLMSR_LBR) == 0
    assert v.rdmsr(MSR_IA32_DEBUGCTLMSR) == 0
