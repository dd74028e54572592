"""Guest PMIs through the dedicated vector, the skid window, and no leaks."""

from __future__ import annotations

import pytest
from vpmu_core import ExitProfile, Work


@pytest.mark.parametrize("cpu", ["intel/icelake", "amd/zen4"])
@pytest.mark.parametrize("switch_at", ["run_loop", "exit", "vcpu_run"])
def test_guest_overflow_is_injected_through_virtual_lvtpc(cpu, switch_at, host_factory, guest_driver) -> None:
    host = host_factory(cpu, switch_at=switch_at)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=20_000)).vcpus[0]
    d = guest_driver(v, cpu.split("/")[0])
    v.wrmsr(0x834, 0xFE)  # LVTPC fixed vector 0xFE, unmasked
    d.global_ctrl(0)
    d.program(0, "instructions", pmi=True)
    mask = v.pmu.gp[0].mask
    d.vcpu.wrmsr(d.ctr_msr(0), mask - 99_999)  # wraps after 100,000 instructions
    d.global_ctrl(0b1)
    v.execute(Work(instructions=1_000_000))
    d.global_ctrl(0)
    assert [p.vector for p in v.pmis] == [0xFE]
    assert v.stats.exits["pmi"] == 1
    assert v.rdmsr(d.globals["status"]) & 1
    assert d.read(0) == 1_000_001 - 100_000  # counted on past the wrap
    mode = host.report()["mode"]
    assert mode["pmis_claimed"] == 1
    assert "host_pmi_nmi" not in host.costs_ledger.cycles["host"]  # the host NMI handler never ran
    assert mode["leaks"] == 0


def test_pmi_with_skid_after_exit_before_put_is_the_guests(host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake", switch_at="run_loop")
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=0)).vcpus[0]
    d = guest_driver(v, "intel")
    v.wrmsr(0x834, 0xFE)
    d.global_ctrl(0)
    d.program(0, "instructions", pmi=True)
    d.global_ctrl(0b1)
    v.execute(Work(instructions=1000))
    cpu = v.cpu
    hw_pmc = cpu.pmu.pmc(0)
    # the overflow's PMI lands during a fastpath exit: out of guest mode, context still loaded
    v._exit("msr_write", True, False, handler=lambda: cpu.handle_overflows([(hw_pmc, 0)]))
    mode = host.report()["mode"]
    assert mode["pmis_claimed"] == 1 and mode["pmis_claimed_after_exit"] == 1
    assert len(v.pmis) == 1
    assert "host_pmi_nmi" not in host.costs_ledger.cycles["host"]


def test_no_host_value_readable_and_no_guest_value_left(host_factory, guest_driver) -> None:
    """Host perf uses counters between guest runs; the guest never sees them and the host
    never finds the guest's values (checked by the engine on every switch)."""
    from vpmu_core import PerfEventAttr

    host = host_factory("intel/icelake", cpus=1)
    ev = host.perf_event_open(PerfEventAttr(config="instructions", exclude_guest=True, pinned=True), pid=-1, cpu=0)
    task = host.spawn_task("host", cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=50_000, fastpath_share=0.3))
    v = vm.vcpus[0]
    d = guest_driver(v, "intel")
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.global_ctrl(0b1)
    for _ in range(5):
        task.execute(Work(instructions=2_000_000))
        v.queue(Work(instructions=2_000_000))
        host.advance(ns=2_000_000)
    assert host.leaks.checks > 20 and host.leaks.leaks == []
    d.global_ctrl(0)
    guest = d.read(0)
    assert guest == 10_000_001  # exact across host/guest interleaving on one CPU
    assert ev.read().value >= 10_000_000  # host counted its own task, not the guest
