"""Facilities under the mediated vPMU: off as merged, or passed through and switched at the
PMU boundary (the design issue 5 describes), where the Arch LBR depth rule shows why KVM
allows only the host's depth."""

from __future__ import annotations

import pytest
import vpmu_core as vpmu
import vpmu_intel_arch
import vpmu_intel_archlbr

import vpmu_mode_mediated

PLUGINS = [
    ("intel_arch", vpmu_intel_arch),
    ("intel_archlbr", vpmu_intel_archlbr),
    ("mode_mediated", vpmu_mode_mediated),
]
LBR_CTL, LBR_DEPTH, LBR_FROM0 = 0x14CE, 0x14CF, 0x1500
LBREN_OS_USR = 0x7 | (0x7F << 16)  # LBREn, OS, USR, every branch type


def vcpu_on_spr(facilities: str, depth_rule: str = "host_only"):
    host = vpmu.compose(
        cpu="intel/sapphirerapids",
        mode="mediated",
        facilities=("arch_lbr",),
        facility_options={"arch_lbr": {"depth_rule": depth_rule}},
        mode_options={"facilities": facilities},
        plugins=PLUGINS,
    )
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=20_000, fastpath_share=0.0))
    return host, vm.vcpus[0]


def nonzero_records(v, depth: int) -> int:
    return sum(1 for i in range(depth) if v.rdmsr(LBR_FROM0 + i))


def test_merged_kernel_gives_mediated_guests_no_lbr():
    _, v = vcpu_on_spr("off")
    assert not v.cpuid(0x7, 0)[3] >> 19 & 1, "CPUID.7.0:EDX[19] (Arch LBR) hidden"
    with pytest.raises(vpmu.GuestFault):
        v.wrmsr(LBR_CTL, LBREN_OS_USR)


def test_passthrough_switches_lbr_with_the_pmu_and_keeps_records():
    host, v = vcpu_on_spr("passthrough")
    assert v.cpuid(0x7, 0)[3] >> 19 & 1
    v.wrmsr(LBR_CTL, LBREN_OS_USR)
    v.execute(vpmu.Work(instructions=20_000_000, branches=2_000_000))
    assert v.stats.exits["external_interrupt"] > 10, "slow exits: the PMU (and LBR) switched many times"
    before = v.stats.total_exits
    assert nonzero_records(v, 32) == 32
    assert v.stats.total_exits == before, "record MSRs are passed through: no exit"
    oh = v.stats.overhead_cycles
    assert oh["lbr_xsaves"] > 0 and oh["lbr_xrstors"] > 0


def test_depth_rule_any_lets_every_switch_wipe_the_guest_records():
    host, v = vcpu_on_spr("passthrough", depth_rule="any")
    v.wrmsr(LBR_DEPTH, 16)  # the host runs at 32; the guest picks 16
    v.wrmsr(LBR_CTL, LBREN_OS_USR)
    v.execute(vpmu.Work(instructions=20_000_000, branches=2_000_000))
    v.wrmsr(LBR_CTL, 0)  # freeze the records, as perf does before reading them
    v.cpuid(0, 0)  # any slow-path exit: PMU put + load, XRSTORS of the LBR component
    # the guest's records were there, but the load's XRSTORS ran against depth 32
    assert nonzero_records(v, 16) == 0


def test_same_sequence_at_the_host_depth_keeps_the_records():
    host, v = vcpu_on_spr("passthrough", depth_rule="any")
    v.wrmsr(LBR_DEPTH, 32)
    v.wrmsr(LBR_CTL, LBREN_OS_USR)
    v.execute(vpmu.Work(instructions=20_000_000, branches=2_000_000))
    v.wrmsr(LBR_CTL, 0)
    v.cpuid(0, 0)
    assert nonzero_records(v, 32) == 32


def test_depth_rule_host_only_refuses_other_depths():
    _, v = vcpu_on_spr("passthrough")
    with pytest.raises(vpmu.GuestFault):
        v.wrmsr(LBR_DEPTH, 16)
