"""KVM selftests `x86/vmx_pmu_caps_test.c` (the guest side: guest_wrmsr_perf_capabilities),
replayed through the public API (DESIGN §5; the guest side is tests/peer/guest.py)
-> `test_sel_vmx_pmu_caps_*`."""

from __future__ import annotations

import pytest

from tests.peer.guest import (
    GP_VECTOR,
    MODES,
    MSR_IA32_PERF_CAPABILITIES,
    PMU_CAP_FW_WRITES,
    SEL_CPUS,
    faults,
    make_vcpu,
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
def test_sel_vmx_pmu_caps_guest_wrmsr_gp(cpu: str, mode: str) -> None:
    """guest_wrmsr_perf_capabilities: every guest WRMSR to PERF_CAPABILITIES #GPs (current
    value, 0, each bit flipped) and the guest keeps reading the userspace-set value."""
    v = make_vcpu(cpu, mode, facilities=("lbr",))
    current = v.rdmsr(MSR_IA32_PERF_CAPABILITIES)
    assert current & PMU_CAP_FW_WRITES, "Full-width writes should always be supported"
    for val in (current, 0, *(current ^ (1 << i) for i in range(64))):
        assert faults(v.wrmsr, MSR_IA32_PERF_CAPABILITIES, val) == GP_VECTOR, hex(val)
    assert v.rdmsr(MSR_IA32_PERF_CAPABILITIES) == current
