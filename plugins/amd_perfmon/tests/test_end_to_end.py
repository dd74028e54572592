"""End to end through the core engine: a guest programs its vPMU and counts exactly.

Counting window (DESIGN.md §5): each guest wrmsr/rdmsr retires one instruction counted
under the PMU state before it, so enabling then disabling around `execute(N, B)` reads
exactly N + 1 instructions (the disabling write) and B branches.
"""

from __future__ import annotations

import pytest
from vpmu_core.events import Work
from vpmu_core.host import compose
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.testing import toy

import vpmu_amd_perfmon
from vpmu_amd_perfmon import eventsel as es
from vpmu_amd_perfmon.models import MODELS
from vpmu_amd_perfmon.pmu import F15H_PERF_CTL0, F15H_PERF_CTR0, GLOBAL_CTL, GLOBAL_STATUS, K7_EVNTSEL0, K7_PERFCTR0

PLUGINS = [("amd_perfmon", vpmu_amd_perfmon), ("toy", toy)]
CNT = es.USR | es.OS | es.EN
N, B = 1_234_567, 89_012


def _vcpu(cpu: str, pmu: GuestPmuConfig | None = None):  # type: ignore[no-untyped-def]
    host = compose(cpu=cpu, mode="reference", plugins=PLUGINS, seed=3)
    return host.create_vm(vcpus=1, pin=[0], pmu=pmu).vcpus[0]


@pytest.mark.parametrize("cpu", sorted(MODELS))
def test_exact_counts_across_a_disabling_write(cpu: str) -> None:
    v = _vcpu(cpu)
    ext = MODELS[cpu].ext_core
    ctl = (lambda i: F15H_PERF_CTL0 + 2 * i) if ext else (lambda i: K7_EVNTSEL0 + i)
    ctr = (lambda i: F15H_PERF_CTR0 + 2 * i) if ext else (lambda i: K7_PERFCTR0 + i)
    insn, br = es.encode(0xC0) | CNT, es.encode(0xC2) | CNT
    if MODELS[cpu].perfmon_v2:
        v.wrmsr(GLOBAL_CTL, 0)
        v.wrmsr(ctl(0), insn)
        v.wrmsr(ctl(1), br)
        v.wrmsr(GLOBAL_CTL, 0b11)  # enable
        v.execute(Work(instructions=N, branches=B))
        v.wrmsr(GLOBAL_CTL, 0)  # disable: counted
    else:
        v.wrmsr(ctl(1), br)
        v.wrmsr(ctl(0), insn)  # enable: not counted
        v.execute(Work(instructions=N, branches=B))
        v.wrmsr(ctl(0), insn & ~es.EN)  # disable: counted
        v.wrmsr(ctl(1), br & ~es.EN)
    assert v.rdmsr(ctr(0)) == N + 1
    assert v.rdmsr(ctr(1)) == B


def test_guest_overflow_sets_global_status_and_pmi() -> None:
    v = _vcpu("amd/zen4")
    v.wrmsr(0x834, 0xF0)  # LVTPC: vector 0xF0, unmasked
    v.wrmsr(F15H_PERF_CTR0, (1 << 48) - 1000)
    v.wrmsr(F15H_PERF_CTL0, es.encode(0xC0) | CNT | es.INT)
    v.execute(Work(instructions=5000))
    assert v.rdmsr(GLOBAL_STATUS) & 1
    assert len(v.pmis) == 1


def test_guest_counters_past_the_number_gp() -> None:
    from vpmu_core.errors import GuestFault

    v = _vcpu("amd/zen4", GuestPmuConfig(gp_counters=2))
    assert v.cpuid(0x80000022, 0)[1] & 0xF == 2
    with pytest.raises(GuestFault):
        v.wrmsr(F15H_PERF_CTL0 + 4, 0)
    with pytest.raises(GuestFault):
        v.rdpmc(2)


@pytest.mark.parametrize("cpu", sorted(MODELS))
def test_guest_perf_on_the_vcpu_port(cpu: str) -> None:
    """The same driver serves guest perf, through the vCPU's rdmsr/wrmsr/rdpmc/cpuid only."""
    from vpmu_core.perf.attr import PerfEventAttr

    host = compose(cpu=cpu, mode="reference", plugins=PLUGINS, seed=5)
    vm = host.create_vm(vcpus=1, pin=[0])
    gp = vm.guest_perf
    br = gp.perf_event_open(PerfEventAttr(config="branches", pinned=True), cpu=0)
    miss = gp.perf_event_open(PerfEventAttr(config="branch-misses", pinned=True, exclude_kernel=True), cpu=0)
    vm.vcpus[0].execute(Work(instructions=N, branches=B, branch_misses=77))
    vm.vcpus[0].execute(Work(instructions=N, branches=B, branch_misses=11, cpl=3))
    br.disable()
    miss.disable()
    assert br.read().value == 2 * B
    assert miss.read().value == 11


def test_pmi_leaves_lvtpc_unmasked_on_amd() -> None:
    """KVM masks the guest LVTPC on PMI delivery only for Intel-compatible CPUID
    (kvm_apic_local_deliver); an AMD guest's LVTPC stays unmasked and takes the next PMI."""
    import vpmu_core as vpmu
    from vpmu_core.testing import toy

    import vpmu_amd_perfmon

    host = vpmu.compose(cpu="amd/zen4", mode="reference", plugins=[("amd_perfmon", vpmu_amd_perfmon), ("toy", toy)])
    v = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=0)).vcpus[0]
    v.wrmsr(0x834, 0xF0)
    v.wrmsr(0xC0000301, 0)
    v.wrmsr(0xC0010201, (1 << 48) - 100)
    v.wrmsr(0xC0010200, 0x5300C0)  # instructions, USR|OS|INT|EN
    v.wrmsr(0xC0000301, 1)
    v.execute(vpmu.Work(instructions=150))
    assert len(v.pmis) == 1 and not v.lapic.masked
    v.wrmsr(0xC0000302, 1)  # ack
    v.wrmsr(0xC0010201, (1 << 48) - 100)
    v.execute(vpmu.Work(instructions=150))
    assert len(v.pmis) == 2, "no unmask needed on AMD"
