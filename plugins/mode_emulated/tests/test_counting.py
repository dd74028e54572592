"""No host contention: guest counts equal ground truth exactly, across thousands of exits."""

from __future__ import annotations

import pytest
from emu_helpers import MODELS, Guest, make_host
from vpmu_core import ExitProfile, PerfEventAttr, Work
from vpmu_core.events import EventKind

N, B = 30_000_000, 3_000_000
EXITS = ExitProfile(rate_per_s=400_000, fastpath_share=0.4, userspace_share=0.02)


@pytest.mark.parametrize("cpu", MODELS)
def test_raw_counters_exact_across_thousands_of_exits(cpu: str) -> None:
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=EXITS).vcpus[0]
    g = Guest(v)
    g.set_global(0)
    g.sel(1, EventKind.BRANCHES)
    g.sel(0, EventKind.INSTRUCTIONS)  # enabling write: not counted (counting window)
    g.set_global(g.all_gp(2))
    for _ in range(4):
        v.execute(Work(instructions=N // 4, branches=B // 4))
    if g.gctrl is not None:
        g.set_global(0)  # the disabling write counts: N + 1
    else:
        g.sel(0, EventKind.INSTRUCTIONS, en=False)  # disabling write counts
        g.sel(1, EventKind.BRANCHES, en=False)
    assert v.stats.total_exits > 2000
    assert g.read(0) == N + 1
    assert g.read(1) == B
    # Nothing ever contended: no silent error, every backing event ACTIVE while enabled.
    assert host.silent.intervals == []


@pytest.mark.parametrize("cpu", MODELS)
def test_guest_perf_exact_with_interleaved_exits(cpu: str) -> None:
    host = make_host(cpu)
    vm = host.create_vm(vcpus=1, pin=[0], exits=EXITS)
    gp = vm.guest_perf
    evs = [gp.perf_event_open(PerfEventAttr(config=c, pinned=True), cpu=0) for c in ("branches", "cycles")]
    v = vm.vcpus[0]
    v.execute(Work(instructions=N, branches=B, cycles=2 * N))
    for e in evs:
        e.disable()
    assert v.stats.total_exits > 2000
    for e in evs:
        assert e.read().value == gp.perf.truth_of(e), (cpu, e)
    assert evs[0].read().value == B


@pytest.mark.parametrize("cpu", MODELS)
def test_counter_read_is_base_plus_emulated_plus_perf(cpu: str) -> None:
    """pmc_read_counter while the event is live; pmc_write_counter only moves the base."""
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=0)).vcpus[0]
    g = Guest(v)
    g.set_global(0)
    g.sel(0, EventKind.BRANCHES)
    g.set_global(1)
    v.execute(Work(instructions=1000, branches=700))
    kp = g.kpmu().pmcs[0]
    live = kp.perf_event.read().value
    assert live == 700 and kp.counter + kp.emulated_counter + live == g.read(0) == 700
    creates = g.kpmu().stats["perf_event_create"]
    g.write(0, 5)  # a counter write: base adjusted, no reprogram, a period update
    assert g.kpmu().stats["perf_event_create"] == creates
    assert g.read(0) == 5
    v.execute(Work(instructions=10, branches=10))
    assert g.read(0) == 15


def test_guests_get_at_most_three_fixed_counters() -> None:
    """kvm_init_pmu_capability: without the mediated vPMU KVM exposes at most 3 fixed counters,
    so an Ice Lake guest sees no topdown-slots counter (CPUID.0AH:EDX[4:0] = 3, 0x30C #GPs)."""
    import pytest
    import vpmu_core as vpmu
    from emu_helpers import AVAILABLE, plugins_for

    if "intel/icelake" not in AVAILABLE:
        pytest.skip("needs intel/icelake")
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", plugins=plugins_for("intel/icelake"))
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    assert v.cpuid(0xA, 0)[3] & 0x1F == 3
    with pytest.raises(vpmu.GuestFault):
        v.rdmsr(0x30C)
