"""Gap document §4.2 (seed 003): host and guest LBR contention, cases 1-5, with the real
legacy LBR and Arch LBR facilities under the emulated vPMU (KVM's vLBR event: a pinned
per-task event that only claims the "lbr" resource). Skipped when mode_emulated is absent.

The host LBR user is a real host perf event with a branch stack (intel_arch's driver puts it
on the "lbr" resource), so ownership is decided by the perf scheduler alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from lbr_helpers import ARCH_CPU, CTL_ALL, DEBUGCTL, LBR_CTL, PLUGINS

from vpmu_core import EventState, ExitProfile, PerfEventAttr, Work, compose

emulated = pytest.importorskip("vpmu_mode_emulated")

CASES = [("intel/icelake", "lbr", DEBUGCTL, 1, 0x680), (ARCH_CPU, "arch_lbr", LBR_CTL, CTL_ALL, 0x1500)]
W = Work(instructions=1_000_000, branches=100_000)


class Guest:
    def __init__(self, cpu: str, facility: str, ctl: int, on: int, rec: int) -> None:
        plugins = [*PLUGINS, ("mode_emulated", emulated)]
        self.host = compose(cpu=cpu, mode="emulated", facilities=(facility,), plugins=plugins)
        self.v = self.host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=20_000)).vcpus[0]
        self.facility, self.ctl, self.on, self.rec = facility, ctl, on, rec

    @property
    def state(self) -> Any:
        return self.v.facilities[self.facility]

    @property
    def vlbr(self) -> Any:
        return self.v.mode_state.vlbrs[self.facility]

    def lbr_on(self) -> None:
        self.v.wrmsr(self.ctl, self.on)

    def lbr_off(self) -> None:
        self.v.wrmsr(self.ctl, 0)

    def records(self) -> list[tuple[int, int, int]]:
        return list(self.state.ring.slots)

    def youngest_read(self) -> int:
        """What the guest reads from a record MSR (FROM of slot/entry 0)."""
        return self.v.rdmsr(self.rec)

    def host_lbr_user(self, pinned: bool) -> Any:
        attr = PerfEventAttr(config="cycles", pinned=pinned, branch_sample_type=("any",), exclude_guest=True)
        return self.host.perf_event_open(attr, pid=-1, cpu=0)


@pytest.fixture(params=CASES, ids=["lbr", "arch_lbr"])
def g(request: pytest.FixtureRequest) -> Guest:
    return Guest(*request.param)


def zero(records: list[tuple[int, int, int]]) -> bool:
    return all(r == (0, 0, 0) for r in records)


def test_without_contention_the_guest_records(g: Guest) -> None:
    g.lbr_on()
    assert g.vlbr.active and g.vlbr.event.hw.resources[0][0] == "lbr"
    g.v.execute(W)
    assert all(r[0] for r in g.records()) and g.youngest_read() != 0


def test_case1_host_pinned_lbr_at_start_guest_cannot_use_lbr(g: Guest) -> None:
    h = g.host_lbr_user(pinned=True)
    g.lbr_on()
    assert h.state == EventState.ACTIVE and g.vlbr.event.state == EventState.ERROR
    g.v.execute(W)
    assert zero(g.records()) and g.youngest_read() == 0


def test_case2_host_flexible_lbr_at_start_guest_preempts(g: Guest) -> None:
    h = g.host_lbr_user(pinned=False)
    assert h.state == EventState.ACTIVE
    g.lbr_on()
    assert g.vlbr.active and h.state == EventState.INACTIVE
    g.v.execute(W)
    assert all(r[0] for r in g.records())


def test_case3_host_pinned_lbr_arrives_guest_loses_it(g: Guest) -> None:
    g.lbr_on()
    g.v.execute(W)
    before = g.records()
    g.host_lbr_user(pinned=True)
    assert g.vlbr.event.state == EventState.ERROR
    g.v.execute(W)
    assert g.records() == before, "the records stop filling, silently"
    assert g.youngest_read() == 0, "intercepted again: the guest reads 0"


def test_case4_host_flexible_lbr_arrives_guest_keeps_it(g: Guest) -> None:
    g.lbr_on()
    g.v.execute(W)
    before = g.records()
    h = g.host_lbr_user(pinned=False)
    g.v.execute(Work(instructions=1_000_000, branches=100_001))
    assert g.vlbr.active and h.state == EventState.INACTIVE
    assert g.records() != before and all(r[0] for r in g.records())


def test_case5_host_pinned_lbr_off_guest_gets_it_back(g: Guest) -> None:
    g.lbr_on()
    h = g.host_lbr_user(pinned=True)
    g.v.execute(W)
    h.close()
    g.v.execute(W)
    assert not g.vlbr.active, "KVM never re-enables a vLBR event in ERROR"
    g.lbr_off()
    t = g.host.spawn_task("other", cpu=0)
    t.execute(Work(instructions=3_000_000))
    g.v.queue(Work(instructions=20_000_000))
    g.host.advance(ns=12_000_000)  # lazy cleanup releases the event
    assert g.vlbr.event is None
    g.lbr_on()
    assert g.vlbr.active
    g.v.execute(W)
    assert all(r[0] for r in g.records()) and g.youngest_read() != 0
