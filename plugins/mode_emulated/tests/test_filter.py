"""KVM_SET_PMU_EVENT_FILTER: allow/deny lists, masked entries, the fixed-counter bitmap,
applied at every reprogram; a denied counter is frozen and nothing tells the guest."""

from __future__ import annotations

import pytest
from emu_helpers import INTEL, MODELS, Guest, make_host
from vpmu_core import ExitProfile, Work
from vpmu_core.events import EventKind
from vpmu_core.hw.pmc import FIXED_BASE

EXITS = ExitProfile(rate_per_s=100_000)
N, B = 4_000_000, 400_000


def _setup(cpu: str) -> tuple[Guest, object]:
    host = make_host(cpu)
    vm = host.create_vm(vcpus=1, pin=[0], exits=EXITS)
    return Guest(vm.vcpus[0]), vm


def _count(g: Guest) -> tuple[int, int]:
    """Count N instructions / B branches on gp0 / gp1, return what the guest reads."""
    g.set_global(0)
    g.sel(1, EventKind.BRANCHES)
    g.sel(0, EventKind.INSTRUCTIONS)
    g.set_global(0b11)
    g.v.execute(Work(instructions=N, branches=B))
    return g.read(0), g.read(1)


@pytest.mark.parametrize("cpu", MODELS)
def test_deny_list_freezes_the_counter_silently(cpu: str) -> None:
    g, vm = _setup(cpu)
    vm.set_pmu_event_filter("deny", events=[g.codes[EventKind.BRANCHES]])  # type: ignore[attr-defined]
    ins, br = _count(g)
    assert br == 0 and ins >= N  # denied: frozen at 0, no #GP, no status bit
    assert g.kpmu().pmcs[1].perf_event is None
    assert [(iv.counter, iv.cause) for iv in g.v.host.silent.intervals] == [("gp1", "event filter")]


@pytest.mark.parametrize("cpu", MODELS)
def test_allow_list(cpu: str) -> None:
    g, vm = _setup(cpu)
    vm.set_pmu_event_filter("allow", events=[g.codes[EventKind.BRANCHES]])  # type: ignore[attr-defined]
    ins, br = _count(g)
    assert br == B and ins == 0  # instructions are not on the allow list: also no emulated count


@pytest.mark.parametrize("cpu", MODELS)
def test_filter_set_while_counting_freezes_at_the_next_entry(cpu: str) -> None:
    g, vm = _setup(cpu)
    ins, br = _count(g)
    assert br == B
    vm.set_pmu_event_filter("deny", events=[g.codes[EventKind.BRANCHES]])  # type: ignore[attr-defined]
    g.v.execute(Work(instructions=N, branches=B))
    assert g.read(1) == B  # frozen at its value when the filter took effect
    assert g.read(0) >= 2 * N
    kp = g.kpmu().pmcs[1]
    assert kp.is_paused and kp.perf_event is not None  # paused, not released
    vm.set_pmu_event_filter("deny", events=[])  # type: ignore[attr-defined]
    g.v.execute(Work(instructions=N, branches=B))
    assert g.read(1) == 2 * B  # resumed (the same event reused)
    assert g.kpmu().stats["perf_event_create"] == 2


@pytest.mark.parametrize("cpu", MODELS)
def test_masked_entries(cpu: str) -> None:
    """Masked entry: event select + (umask & mask) == match; exclude entries win."""
    g, vm = _setup(cpu)
    code = g.codes[EventKind.BRANCHES]
    include_any_umask = (code & 0xFF) | (0x00 << 8) | (0x00 << 56)  # umask_mask 0: any umask
    exclude_bit = 1 << 55
    vm.set_pmu_event_filter("allow", events=[include_any_umask], masked=True)  # type: ignore[attr-defined]
    _, br = _count(g)
    assert br == B
    g2, vm2 = _setup(cpu)
    vm2.set_pmu_event_filter(  # type: ignore[attr-defined]
        "allow", events=[include_any_umask, include_any_umask | exclude_bit], masked=True
    )
    _, br2 = _count(g2)
    assert br2 == 0


@pytest.mark.parametrize("cpu", INTEL)
def test_fixed_counter_bitmap(cpu: str) -> None:
    g, vm = _setup(cpu)
    v = g.v
    # ALLOW with bit 1 set: fixed1 allowed, fixed0 denied (bit clear), whatever the GP list says
    vm.set_pmu_event_filter("allow", events=[0x00C0], fixed_counter_bitmap=0b10)  # type: ignore[attr-defined]
    v.wrmsr(g.gctrl, 0)
    v.wrmsr(g.pmu.fixed_ctrl_msr(), 0x33)
    v.wrmsr(g.gctrl, 0b11 << FIXED_BASE)
    v.execute(Work(instructions=N, cycles=2 * N))
    v.wrmsr(g.gctrl, 0)
    f0 = v.rdmsr(g.pmu.counter_msrs(g.pmu.fixed[0])[0])
    f1 = v.rdmsr(g.pmu.counter_msrs(g.pmu.fixed[1])[0])
    assert f0 == 0 and f1 == 2 * N
    # DENY with bit 0 set: fixed0 denied
    g2, vm2 = _setup(cpu)
    vm2.set_pmu_event_filter("deny", fixed_counter_bitmap=0b1)  # type: ignore[attr-defined]
    v2 = g2.v
    v2.wrmsr(g2.gctrl, 0)
    v2.wrmsr(g2.pmu.fixed_ctrl_msr(), 0x33)
    v2.wrmsr(g2.gctrl, 0b11 << FIXED_BASE)
    v2.execute(Work(instructions=N, cycles=2 * N))
    assert v2.rdmsr(g2.pmu.counter_msrs(g2.pmu.fixed[0])[0]) == 0
    assert v2.rdmsr(g2.pmu.counter_msrs(g2.pmu.fixed[1])[0]) == 2 * N
