"""The perf driver under the real PerfSubsystem, on physical PMUs and on guest PMUs."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from vpmu_intel_arch.events import SKL_CONSTRAINTS, SPR_CONSTRAINTS, constraint_mask
from vpmu_intel_arch.models import IntelCpuModel, make_icelake, make_sapphirerapids, make_skylake
from vpmu_intel_arch.pmu import MSR_A_PMC0, MSR_GLOBAL_CTRL, MSR_PMC0

from vpmu_core.errors import PerfError
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.pmc import FIXED_BASE
from vpmu_core.perf.attr import EventState, PerfEventAttr
from vpmu_core.perf.core import PerfSubsystem

N, B = 123_457, 9_999


@pytest.fixture
def host(make_cpu: Callable) -> Callable:
    def build(model: IntelCpuModel, guest: GuestPmuConfig | None = None):  # noqa: ANN202
        cpu = make_cpu(model, guest)
        return cpu, PerfSubsystem(model.make_driver(), [cpu])

    return build


def test_generic_events_exact_counts_on_fixed_and_gp(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model)
    ins = perf.perf_event_open(PerfEventAttr(config="instructions"), cpu=0)
    cyc = perf.perf_event_open(PerfEventAttr(config="cycles"), cpu=0)
    br = perf.perf_event_open(PerfEventAttr(config="branches"), cpu=0)
    raw_ins = perf.perf_event_open(PerfEventAttr(type="raw", config=0x00C0), cpu=0)
    assert (ins.idx, cyc.idx) == (FIXED_BASE, FIXED_BASE + 1)  # fixed counters first
    assert br.idx is not None and br.idx < FIXED_BASE
    assert raw_ins.idx is not None and raw_ins.idx < FIXED_BASE  # fixed0 taken: falls back to GP
    work = Work(instructions=N, branches=B, cycles=2 * N, cpl=3)
    cpu.port.pmu.accrue(work.counts, 3, False)
    assert [e.read().value for e in (ins, cyc, br, raw_ins)] == [N, 2 * N, B, N]
    assert ins.hw.kind == int(EventKind.INSTRUCTIONS)


def test_ref_cycles_fixed_only(model: IntelCpuModel, host: Callable) -> None:
    _, perf = host(model)
    hw = perf.driver.hw_event(PerfEventAttr(config="ref-cycles"), perf.port(0))
    assert hw.mask == 1 << (FIXED_BASE + 2) and hw.kind == int(EventKind.REF_CYCLES)
    a = perf.perf_event_open(PerfEventAttr(config="ref-cycles"), cpu=0)
    b = perf.perf_event_open(PerfEventAttr(config="ref-cycles"), cpu=0)
    assert a.state == EventState.ACTIVE and b.state == EventState.INACTIVE
    assert perf.needs_rotation(0)


def test_exclude_user_kernel(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model)
    u = perf.perf_event_open(PerfEventAttr(config="branches", exclude_kernel=True), cpu=0)
    k = perf.perf_event_open(PerfEventAttr(config="branches", exclude_user=True), cpu=0)
    cpu.port.pmu.accrue(Work(instructions=10, branches=3, cpl=3).counts, 3, False)
    cpu.port.pmu.accrue(Work(instructions=10, branches=5, cpl=0).counts, 0, False)
    assert (u.read().value, k.read().value) == (3, 5)


def test_skylake_constraint_keeps_events_on_pmc0_3() -> None:
    # 8 GP counters (SMT off): MEM_* restricted to PMC0-3, PREC_DIST to PMC1
    assert constraint_mask(SKL_CONSTRAINTS, 0x81D0, 0xFF) == 0xF
    assert constraint_mask(SKL_CONSTRAINTS, 0x01C0, 0xFF) == 0x2
    assert constraint_mask(SKL_CONSTRAINTS, 0x00C0, 0xFF) == 0xFF | 1 << FIXED_BASE
    assert constraint_mask(SKL_CONSTRAINTS, 0x0300, 0xFF) == 1 << (FIXED_BASE + 2)


def test_constraint_placement_under_contention(make_cpu: Callable) -> None:
    model = make_skylake({"smt": False})
    cpu = make_cpu(model)
    perf = PerfSubsystem(model.make_driver(), [cpu])
    free = [perf.perf_event_open(PerfEventAttr(type="raw", config=0x00C4), cpu=0) for _ in range(4)]
    restricted = [
        perf.perf_event_open(PerfEventAttr(type="raw", config=c), cpu=0) for c in (0x81D0, 0x81D1, 0x81D2, 0x01CD)
    ]
    assert all(e.state == EventState.ACTIVE for e in free + restricted)
    assert sorted(e.idx for e in restricted) == [0, 1, 2, 3]
    assert sorted(e.idx for e in free) == [4, 5, 6, 7]
    # a fifth restricted event cannot run although nothing restricts the others: multiplexing
    extra = perf.perf_event_open(PerfEventAttr(type="raw", config=0x01D1), cpu=0)
    assert extra.state == EventState.INACTIVE and perf.needs_rotation(0)
    for _ in range(8):
        perf.rotate(0)
        for e in restricted + [extra]:
            assert e.idx is None or e.idx < 4, "a PMC0-3 event landed on 4-7"
        if extra.state == EventState.ACTIVE:
            break
    assert extra.state == EventState.ACTIVE and extra.idx is not None and extra.idx < 4


def test_spr_pmc0_only_event() -> None:
    assert constraint_mask(SPR_CONSTRAINTS, 0x00CE, 0xFF) == 0x1
    assert constraint_mask(SPR_CONSTRAINTS, 0x012E, 0xFF) == 0xFF  # 0x2e exception before 0x01-0x8f
    assert constraint_mask(SPR_CONSTRAINTS, 0x0151, 0xFF) == 0xF
    # EDGE/INV/CMASK never match a fixed constraint (FIXED_EVENT_FLAGS)
    assert constraint_mask(SPR_CONSTRAINTS, 0x00C0 | 1 << 24, 0xFF) == 0xFF


def test_spr_pmc0_events_multiplex(make_cpu: Callable) -> None:
    model = make_sapphirerapids({})
    cpu = make_cpu(model)
    perf = PerfSubsystem(model.make_driver(), [cpu])
    evs = [perf.perf_event_open(PerfEventAttr(type="raw", config=0x00CE | u << 8), cpu=0) for u in (1, 2)]
    assert [e.state for e in evs] == [EventState.ACTIVE, EventState.INACTIVE] and evs[0].idx == 0
    assert perf.rotate(0)
    assert [e.state for e in evs] == [EventState.INACTIVE, EventState.ACTIVE] and evs[1].idx == 0


def test_more_events_than_counters_multiplex(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model)
    n = model.caps.gp_counters + 2
    evs = [perf.perf_event_open(PerfEventAttr(type="raw", config=0x00C4), cpu=0) for _ in range(n)]
    assert sum(e.state == EventState.ACTIVE for e in evs) == model.caps.gp_counters
    assert perf.needs_rotation(0)
    before = {e.id for e in evs if e.state == EventState.ACTIVE}
    assert perf.rotate(0)
    after = {e.id for e in evs if e.state == EventState.ACTIVE}
    assert before != after and len(after) == model.caps.gp_counters


def test_exclude_guest_host_split(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model)
    h = perf.perf_event_open(PerfEventAttr(config="branches", exclude_guest=True), cpu=0)
    g = perf.perf_event_open(PerfEventAttr(config="branches", exclude_host=True), cpu=0)
    pmu = cpu.port.pmu
    assert pmu.rdmsr(MSR_GLOBAL_CTRL) == 1 << h.idx  # live value excludes guest-only
    assert pmu.entry_loads[MSR_GLOBAL_CTRL] == 1 << g.idx  # VM-entry value excludes host-only
    pmu.accrue(Work(instructions=10, branches=3).counts, 0, False)
    pmu.accrue(Work(instructions=10, branches=5).counts, 0, True)
    assert (h.read().value, g.read().value) == (3, 5)
    g.close()
    assert pmu.entry_loads[MSR_GLOBAL_CTRL] == 0


def test_sampling_overflow_reload(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model)
    seen: list[int] = []
    ev = perf.perf_event_open(
        PerfEventAttr(config="branches", sample_period=100), cpu=0, overflow_handler=lambda e, o: seen.append(o)
    )
    pmu = cpu.port.pmu
    ov = pmu.accrue(Work(instructions=1000, branches=103).counts, 0, False)
    assert ov is not None and ov[0][1] == 3
    assert pmu.raise_overflow(ov[0][0]) is True  # perf always sets INT
    perf.handle_overflow(0, ev.idx, ov[0][1])
    assert seen == [3] and pmu.global_status == 0  # acked through OVF_CTRL
    assert ev.read().value == 103


def test_branch_stack_needs_lbr(model: IntelCpuModel, host: Callable) -> None:
    _, perf = host(model)
    if not model.caps.lbr:  # intel/gracemont: no LBR data modelled
        with pytest.raises(PerfError) as ei:
            perf.driver.hw_event(PerfEventAttr(config="cycles", branch_sample_type=("any",)), perf.port(0))
        assert ei.value.errno == errno.EOPNOTSUPP
        return
    hw = perf.driver.hw_event(PerfEventAttr(config="cycles", branch_sample_type=("any",)), perf.port(0))
    assert hw.resources == (("lbr", "any"),)
    _, gperf = host(model, GuestPmuConfig(lbr=False))
    with pytest.raises(PerfError) as ei:
        gperf.driver.hw_event(PerfEventAttr(config="cycles", branch_sample_type=("any",)), gperf.port(0))
    assert ei.value.errno == errno.EOPNOTSUPP


def test_bad_events(model: IntelCpuModel, host: Callable) -> None:
    _, perf = host(model)
    port = perf.port(0)
    with pytest.raises(PerfError) as ei:
        perf.driver.hw_event(PerfEventAttr(config="no-such-event"), port)
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(PerfError) as ei:
        perf.driver.hw_event(PerfEventAttr(type="raw", config=0xC0 | 1 << 21), port)  # AnyThread
    assert ei.value.errno == errno.EINVAL
    hw = perf.driver.hw_event(PerfEventAttr(type="raw", config=0xC0 | 1 << 18), port)  # EDGE
    assert hw.kind is None  # the span model counts nothing for it


def test_guest_port_smaller_pmu_legacy_writes_cached_cpuid(model: IntelCpuModel, host: Callable) -> None:
    cfg = GuestPmuConfig(version=2, gp_counters=2, fixed_counters=1, full_width_writes=False)
    cpu, perf = host(model, cfg)
    port = cpu.port
    assert perf.driver.counter_mask(port) == 0b11 | 1 << FIXED_BASE
    assert not hasattr(port, "set_entry_loads")
    evs = [perf.perf_event_open(PerfEventAttr(config="branches", sample_period=1000), cpu=0) for _ in range(2)]
    written = [m for op, m, _ in port.log if op == "wrmsr"]
    assert MSR_PMC0 in written and MSR_A_PMC0 not in written  # legacy alias without PERF_CAP[13]
    assert sum(op == "cpuid" and leaf == 0xA for op, leaf, _ in port.log) == 1  # cached per port
    port.pmu.accrue(Work(instructions=10, branches=7).counts, 0, False)
    assert [e.read().value for e in evs] == [7, 7]
    with pytest.raises(PerfError):
        perf.driver.hw_event(PerfEventAttr(config="ref-cycles"), port)  # no fixed2 in this guest


def test_guest_port_v1(model: IntelCpuModel, host: Callable) -> None:
    cpu, perf = host(model, GuestPmuConfig(version=1))
    ev = perf.perf_event_open(PerfEventAttr(config="instructions"), cpu=0)
    assert ev.idx is not None and ev.idx < FIXED_BASE
    cpu.port.pmu.accrue(Work(instructions=42).counts, 0, False)
    assert ev.read().value == 42
    ev.disable()
    cpu.port.pmu.accrue(Work(instructions=42).counts, 0, False)
    assert ev.read().value == 42


# ---- topdown slots encodings (issue 12: Skylake reported raw 0x0400 as slots and counted 0) --
SLOTS_WORK = Work(instructions=1_000, cycles=2_000, topdown_slots=8_000)


def _placed(model: IntelCpuModel, config: int, host: Callable) -> tuple[int, int | None]:
    _, perf = host(model)
    hw = perf.driver.hw_event(PerfEventAttr(type="raw", config=config), perf.port(0))
    return hw.mask, hw.kind


def test_skylake_pseudo_slots_encoding_is_no_topdown_event_on_gp(host: Callable) -> None:
    """Skylake has no SLOTS fixed counter: 0x0400 goes to a GP counter (no constraint names
    it, as in Linux), where event select 00H counts nothing architectural, and the driver
    says so (kind None) instead of promising topdown slots."""
    skl = make_skylake({})
    mask, kind = _placed(skl, 0x0400, host)
    assert not mask >> FIXED_BASE and mask == (1 << len(skl.make_pmu(None).gp)) - 1
    assert kind is None
    cpu, perf = host(skl)
    ev = perf.perf_event_open(PerfEventAttr(type="raw", config=0x0400), cpu=0)
    cpu.port.pmu.accrue(SLOTS_WORK.counts, 0, False)
    assert ev.hw.kind is None and ev.read().value == 0


def test_architectural_slots_event_only_where_enumerated(host: Callable) -> None:
    """A4H/01H (Topdown Slots, architectural event 7) counts on GP counters of CPUs that
    enumerate 8 events (Ice Lake); Skylake enumerates 7, so it is no event there."""
    assert _placed(make_skylake({}), 0x01A4, host)[1] is None
    icl = make_icelake({})
    assert _placed(icl, 0x01A4, host)[1] == EventKind.TOPDOWN_SLOTS
    cpu, perf = host(icl)
    ev = perf.perf_event_open(PerfEventAttr(type="raw", config=0x01A4), cpu=0)
    cpu.port.pmu.accrue(SLOTS_WORK.counts, 0, False)
    assert ev.idx is not None and ev.idx < FIXED_BASE
    assert ev.read().value == SLOTS_WORK.topdown_slots


def test_icelake_pseudo_slots_encoding_stays_on_fixed3(host: Callable) -> None:
    mask, kind = _placed(make_icelake({}), 0x0400, host)
    assert mask == 1 << (FIXED_BASE + 3) and kind == EventKind.TOPDOWN_SLOTS
