"""Host perf keeps working next to the emulated vPMU: exclude_guest events count only host
work (the vendor driver's per-entry GLOBAL_CTRL split / HostOnly-GuestOnly), plain events
count both, and KVM's exclude_host events count only the guest."""

from __future__ import annotations

import pytest
from emu_helpers import MODELS, Guest, make_host
from vpmu_core import ExitProfile, PerfEventAttr, Work
from vpmu_core.events import EventKind

CPUS = [m for m in MODELS if m != "amd/k8"]  # HostOnly/GuestOnly need the F15h+ selectors


@pytest.mark.parametrize("cpu", CPUS)
def test_host_exclude_guest_event_counts_host_work_only(cpu: str) -> None:
    host = make_host(cpu)
    h_ex = host.perf_event_open(PerfEventAttr(config="branches", exclude_guest=True), pid=-1, cpu=0)
    h_all = host.perf_event_open(PerfEventAttr(config="branches"), pid=-1, cpu=0)
    task = host.spawn_task("host-worker", cpu=0)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=100_000)).vcpus[0]
    g = Guest(v)
    g.sel(0, EventKind.BRANCHES)
    task.execute(Work(instructions=5_000_000, branches=300_000))
    v.queue(Work(instructions=5_000_000, branches=700_000))
    host.advance(ns=20_000_000)
    g.sel(0, EventKind.BRANCHES, en=False)
    assert g.read(0) == 700_000
    assert h_ex.read().value == host.perf.truth_of(h_ex) == 300_000
    assert h_all.read().value == host.perf.truth_of(h_all) == 1_000_000
