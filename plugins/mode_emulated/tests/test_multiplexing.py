"""Seed talk (004): multiplexing in the guest makes KVM recreate perf events. 4 vs 10 guest
events on 8 GP counters: perf API calls and overhead cycles per guest second."""

from __future__ import annotations

from typing import Any

import pytest
from emu_helpers import AVAILABLE, make_host
from vpmu_core import ExitProfile, PerfEventAttr, Work

#: GP-only events (none of them maps to a fixed counter), so 10 of them overcommit 8 counters
INTEL_EVENTS = [0x00C4, 0x00C5, 0x012E, 0x4F2E, 0x013C, 0x02C4, 0x04C4, 0x20C4, 0x01C4, 0x08C4]
TOY_EVENTS = [5, 6, 3, 4, 7, 8, 9, 10, 11, 12]


def measure(cpu: str, n: int, events: list[int], **kw: Any) -> dict[str, float]:
    host = make_host(cpu, **kw)
    vm = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=10_000))
    for c in events[:n]:
        vm.guest_perf.perf_event_open(PerfEventAttr(type="raw", config=c), cpu=0)
    v = vm.vcpus[0]
    v.execute(Work(instructions=300_000_000, branches=30_000_000))  # 0.1 guest seconds
    guest_s = v.stats.guest_cycles / host.freq_hz
    mode = host.mode.vpmu_mode_report(host)
    over = host.report()["overhead"][v.name]
    perf_cycles = sum(c for op, c in over["overhead_cycles"].items() if op.startswith("perf_event_"))
    return {
        "perf_calls_per_s": mode["perf_api_calls_total"] / guest_s,
        "creates_per_s": mode["perf_api_calls"]["perf_event_create"] / guest_s,
        "overhead_cycles_per_s": over["overhead_cycles_per_guest_second"],
        "perf_cycles_per_s": perf_cycles / guest_s,
        "recreate": mode["reprogram"]["recreate"],
        "reuse": mode["reprogram"]["reuse"],
    }


@pytest.mark.parametrize(
    ("cpu", "events", "kw"),
    [
        ("intel/icelake", INTEL_EVENTS, {}),
        ("toy/basic", TOY_EVENTS, {"model_options": {"gp_counters": 8}}),
    ],
)
def test_guest_multiplexing_recreates_events(cpu: str, events: list[int], kw: dict[str, Any]) -> None:
    if cpu not in AVAILABLE and not cpu.startswith("toy/"):
        pytest.skip(f"{cpu} not installed")
    four = measure(cpu, 4, events, **kw)
    ten = measure(cpu, 10, events, **kw)
    # 4 events fit: one create each, nothing after
    assert four["recreate"] == 4 and four["creates_per_s"] == 40
    # 10 on 8 counters: every guest rotation moves events between counters -> recreate
    assert ten["recreate"] > 25 * four["recreate"]
    assert ten["perf_calls_per_s"] > 25 * four["perf_calls_per_s"]
    assert ten["perf_cycles_per_s"] > 25 * four["perf_cycles_per_s"]
    assert ten["overhead_cycles_per_s"] > 3 * four["overhead_cycles_per_s"]
