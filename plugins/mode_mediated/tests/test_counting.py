"""Exact guest counts under mediation in every placement, and no exits on counter access.

DESIGN §5 counting window: after wrmsr(GLOBAL_CTRL, enable), execute(Work(N, B)),
wrmsr(GLOBAL_CTRL, 0), an instructions counter reads exactly N + 1 and a branches counter
exactly B, whatever exits happened in between.
"""

from __future__ import annotations

import pytest
from vpmu_core import GuestPmuConfig, Work

PLACEMENTS = ("run_loop", "exit", "vcpu_run")
CPUS = ("intel/icelake", "amd/zen4")


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("switch_at", PLACEMENTS)
def test_exact_counts_across_thousands_of_exits(cpu, switch_at, host_factory, guest_driver, exits) -> None:
    host = host_factory(cpu, switch_at=switch_at)
    vm = host.create_vm(vcpus=1, pin=[0], exits=exits(rate=100_000, fastpath=0.5, userspace=0.02))
    v = vm.vcpus[0]
    d = guest_driver(v, cpu.split("/")[0])
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.program(1, "branches")
    n, b = 60_000_000, 6_000_000
    d.global_ctrl(0b11)
    v.execute(Work(instructions=n, branches=b))
    d.global_ctrl(0)
    assert v.stats.total_exits > 1000
    assert d.read(0) == n + 1
    assert d.read(1) == b
    mode = host.report()["mode"]
    assert mode["leak_checks"] > 0 and mode["leaks"] == 0, host.leaks.leaks


@pytest.mark.parametrize("cpu", ("intel/skylake", "amd/zen4"))
def test_counter_access_does_not_exit(cpu, host_factory, guest_driver) -> None:
    """Guest counts equal the host's (Skylake 4+3, Zen 4 6+0): nothing PMU but the selectors
    exits (`kvm_need_any_pmc_intercept()` false)."""
    host = host_factory(cpu)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    d = guest_driver(v, cpu.split("/")[0])
    v.execute(Work(instructions=1000))
    before = dict(v.stats.exits)
    d.vcpu.wrmsr(d.ctr_msr(0), 1234)
    assert d.read(0) == 1234
    assert v.rdpmc(0) == 1234
    d.global_ctrl(0)  # global registers pass through when counts match the host's
    assert dict(v.stats.exits) == before
    # selectors are always intercepted (filtering)
    d.program(0, "instructions")
    assert v.stats.exits["msr_write"] == before.get("msr_write", 0) + 1


def test_subset_pmu_intercepts_globals_and_rdpmc(host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(gp_counters=4)).vcpus[0]
    st = v.mode_state
    assert not st.global_passthrough and not st.rdpmc_passthrough
    d = guest_driver(v, "intel")
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.global_ctrl(0b1)
    v.execute(Work(instructions=5_000_000))
    d.global_ctrl(0)
    assert d.read(0) == 5_000_001  # the intercepted GLOBAL_CTRL write is emulated-counted
    assert v.rdpmc(0) == 5_000_001
    assert v.stats.exits["rdpmc"] == 1
    # counters beyond the guest's count #GP (they are not the guest's)
    from vpmu_core import GuestFault

    with pytest.raises(GuestFault):
        v.rdmsr(0x4C1 + 5)
    assert host.leaks.leaks == []


@pytest.mark.parametrize("cpu", CPUS)
def test_event_filter_denies_in_hardware_copy(cpu, host_factory, guest_driver) -> None:
    vendor = cpu.split("/")[0]
    host = host_factory(cpu)
    vm = host.create_vm(vcpus=1, pin=[0])
    vm.set_pmu_event_filter(action="deny", events=[guest_driver(vm.vcpus[0], vendor).events["branches"]])
    v = vm.vcpus[0]
    d = guest_driver(v, vendor)
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.program(1, "branches")
    d.global_ctrl(0b11)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    d.global_ctrl(0)
    assert d.read(0) == 1_000_001
    assert d.read(1) == 0  # denied: EN cleared in eventsel_hw
    # the guest reads back its own selector value, EN included
    assert v.rdmsr(d.sel_msr(1)) & (1 << 22)


@pytest.mark.parametrize("cpu", CPUS)
def test_emulated_instruction_wraps_counter_and_raises_pmi(cpu, host_factory, guest_driver) -> None:
    vendor = cpu.split("/")[0]
    host = host_factory(cpu)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    d = guest_driver(v, vendor)
    v.wrmsr(0x834, 0xFE)  # LVTPC: fixed vector 0xFE, unmasked
    d.global_ctrl(0)
    d.program(0, "instructions", pmi=True)
    width_mask = v.pmu.gp[0].mask
    d.vcpu.wrmsr(d.ctr_msr(0), width_mask)  # one before the wrap
    d.global_ctrl(0b1)
    v.cpuid(0)  # an exiting instruction KVM emulates: counter + 1 wraps to 0
    v.execute(Work(instructions=10))  # the PMI is injected at a following VM-entry
    v.cpuid(0)
    assert host.report()["mode"]["emulated_increments"] >= 2
    status = v.rdmsr(d.globals["status"])
    assert status & 1
    assert len(v.pmis) == 1 and v.pmis[0].vector == 0xFE


@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids"))
def test_four_fixed_host_intercepts_rdpmc_and_globals(cpu, host_factory, guest_driver) -> None:
    """KVM 7.0 gives at most 3 fixed counters (KVM_MAX_NR_INTEL_FIXED_COUNTERS) in the
    mediated mode too; the host has 4, so kvm_need_any_pmc_intercept() ("check *host* PMU
    capabilities") intercepts RDPMC and GLOBAL_CTRL/STATUS/OVF_CTRL, while the counters the
    guest has still pass through (vmx_recalc_pmu_msr_intercepts)."""
    from vpmu_core import GuestFault

    host = host_factory(cpu)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    assert len(v.pmu.fixed) == 3 and len(host.cpus[0].pmu.fixed) == 4
    assert v.cpuid(0xA, 0)[3] & 0x1F == 3
    with pytest.raises(GuestFault):
        v.rdmsr(0x309 + 3)  # FIXED_CTR3 is not the guest's
    d = guest_driver(v, "intel")
    v.execute(Work(instructions=1000))
    for msr, exits in ((0x309, 0), (0xC1, 0), (0x38F, 1), (0x38E, 1), (0x390, 1)):
        before = v.stats.exits["msr_write"] + v.stats.exits["msr_read"]
        v.rdmsr(msr)
        if msr != 0x38E:
            v.wrmsr(msr, 0)
        after = v.stats.exits["msr_write"] + v.stats.exits["msr_read"]
        assert after - before == (exits if msr == 0x38E else 2 * exits), hex(msr)
    before = v.stats.exits["rdpmc"]
    v.rdpmc(0)
    assert v.stats.exits["rdpmc"] == before + 1
    st = v.mode_state
    assert not st.global_passthrough and not st.rdpmc_passthrough
    d.global_ctrl(0)
    assert host.leaks.leaks == []
