"""What a guest sees under KVM 7.0, in both modes, on every model a rule applies to (issue 11).

Cross-plugin: the vendor plugins give the registers, the modes KVM's policy; each test names
the kernel function it checks. Mediated compositions run in every placement where the
placement could matter; models the mediated vPMU refuses (no PerfMonV2, Intel < v4) only
run emulated.
"""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu

INTEL = ("intel/skylake", "intel/icelake", "intel/sapphirerapids")
AMD = ("amd/k8", "amd/zen2", "amd/zen4")
MODES = ("emulated", "mediated:run_loop", "mediated:exit", "mediated:vcpu_run")

MSR_GLOBAL_STATUS = 0x38E
MSR_GLOBAL_CTRL = 0x38F
MSR_GLOBAL_OVF_CTRL = 0x390
MSR_GLOBAL_STATUS_SET = 0x391
MSR_GLOBAL_INUSE = 0x392
CPUID_A_EDX_ANYTHREAD_DEPRECATED = 1 << 15


def vcpu_for(cpu: str, mode: str, pmu: vpmu.GuestPmuConfig | None = None, **opts: Any) -> Any:
    """One vCPU on host CPU 0, no background exits; skip what the mediated vPMU refuses."""
    name, _, placement = mode.partition(":")
    if placement:
        opts["switch_at"] = placement
    try:
        host = vpmu.compose(cpu=cpu, mode=name, cpus=1, mode_options=opts)
    except vpmu.ConfigError as e:
        pytest.skip(str(e))
    vm = host.create_vm(vcpus=1, pin=[0], pmu=pmu or vpmu.GuestPmuConfig(), exits=vpmu.ExitProfile(rate_per_s=0))
    return vm.vcpus[0]


def gp_vector(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except vpmu.GuestFault as e:
        return e.vector
    return 0


# ---- item 6: the guest PMU version KVM advertises is 2 ---------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", INTEL)
def test_default_intel_guest_is_v2_with_at_most_3_fixed(cpu: str, mode: str) -> None:
    """kvm_init_pmu_capability(): version = min(host, 2), fixed = min(host, 3); cpuid.c leaf
    0xA: ECX = 0, EDX[15] AnyThread-deprecated set."""
    v = vcpu_for(cpu, mode)
    eax, _, ecx, edx = v.cpuid(0xA, 0)
    assert eax & 0xFF == 2
    assert ecx == 0
    assert edx & CPUID_A_EDX_ANYTHREAD_DEPRECATED
    assert edx & 0x1F == 3 == len(v.pmu.fixed)
    # v2: no GLOBAL_STATUS_SET / GLOBAL_INUSE (#GP), both directions
    for msr in (MSR_GLOBAL_STATUS_SET, MSR_GLOBAL_INUSE):
        assert gp_vector(v.rdmsr, msr) == 13
        assert gp_vector(v.wrmsr, msr, 0) == 13
    # GLOBAL_OVF_CTRL bits 58-61 are reserved for v2 (KVM global_status_rsvd) where KVM
    # emulates the register; a mediated guest whose counts equal the host's (Skylake) writes
    # the v4 hardware register directly, which takes them (hardware semantics)
    passthrough = MSR_GLOBAL_OVF_CTRL in getattr(v.mode_state, "passthrough", ())
    for bit in range(58, 62):
        assert gp_vector(v.wrmsr, MSR_GLOBAL_OVF_CTRL, 1 << bit) == (0 if passthrough else 13), bit
    assert passthrough == (cpu == "intel/skylake" and mode.startswith("mediated"))
    assert gp_vector(v.wrmsr, MSR_GLOBAL_OVF_CTRL, 1) == 0


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids"))
def test_explicit_version_above_cap_is_clamped(cpu: str, mode: str) -> None:
    v = vcpu_for(cpu, mode, vpmu.GuestPmuConfig(version=5, fixed_counters=4))
    assert v.pmu.version == 2 and len(v.pmu.fixed) == 3
    assert v.cpuid(0xA, 0)[0] & 0xFF == 2


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
def test_explicit_lower_version_is_kept(mode: str) -> None:
    v = vcpu_for("intel/icelake", mode, vpmu.GuestPmuConfig(version=1))
    assert v.cpuid(0xA, 0)[0] & 0xFF == 1 and not v.pmu.fixed
    assert gp_vector(v.rdmsr, MSR_GLOBAL_CTRL) == 13


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids"))
def test_upgrade_v5_option_models_the_unmerged_series(cpu: str, mode: str) -> None:
    """Off by default; on, the guest gets the host's v5 with STATUS_SET/INUSE (still at most
    3 fixed counters: the series does not lift KVM_MAX_NR_INTEL_FIXED_COUNTERS)."""
    v = vcpu_for(cpu, mode, upgrade_v5=True)
    eax, _, ecx, _ = v.cpuid(0xA, 0)
    assert eax & 0xFF == 5 and ecx == 0b111
    v.wrmsr(MSR_GLOBAL_STATUS_SET, 1)
    assert v.rdmsr(MSR_GLOBAL_STATUS) & 1
    assert gp_vector(v.rdmsr, MSR_GLOBAL_INUSE) == 0


@pytest.mark.parametrize("mode", ("emulated", "mediated"))
def test_upgrade_v5_is_a_boolean_option(mode: str) -> None:
    with pytest.raises(vpmu.ConfigError):
        vpmu.compose(cpu="intel/icelake", mode=mode, mode_options={"upgrade_v5": "maybe"})


@pytest.mark.parametrize("mode", MODES)
def test_amd_guest_is_v2_perfmon_v2(mode: str) -> None:
    v = vcpu_for("amd/zen4", mode)
    assert v.pmu.version == 2 and len(v.pmu.gp) == 6
