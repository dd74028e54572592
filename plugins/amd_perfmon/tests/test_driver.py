"""The AMD perf driver under the real perf core, on physical and guest-visible PMUs."""

from __future__ import annotations

import errno

import pytest
from vpmu_core.errors import PerfError
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.perf.attr import EventState, PerfEventAttr
from vpmu_core.perf.core import PerfSubsystem
from vpmu_core.testing.conformance import PhysicalPort, StubCpu

from vpmu_amd_perfmon import eventsel as es
from vpmu_amd_perfmon.driver import AmdPerfDriver
from vpmu_amd_perfmon.models import AmdCpuModel, make_model
from vpmu_amd_perfmon.pmu import GLOBAL_CTL, GLOBAL_STATUS, AmdPmu


def make_env(model: AmdCpuModel, guest: bool = False) -> tuple[PerfSubsystem, AmdPmu, PhysicalPort]:
    cfg = GuestPmuConfig() if guest else None
    pmu = model.make_pmu(cfg)
    port = PhysicalPort(model, pmu, model.cpuid_table(cfg))
    perf = PerfSubsystem(model.make_driver(), [StubCpu(0, port)], name="guest" if guest else "host")
    return perf, pmu, port


def hw(config: str | int, **kw: object) -> PerfEventAttr:
    return PerfEventAttr(type="hardware" if isinstance(config, str) else "raw", config=config, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("guest", [False, True])
def test_exact_counts_through_perf(model: AmdCpuModel, guest: bool) -> None:
    perf, pmu, _ = make_env(model, guest)
    ins = perf.perf_event_open(hw("instructions"), cpu=0)
    br = perf.perf_event_open(hw("branches", exclude_kernel=True), cpu=0)
    miss = perf.perf_event_open(hw("branch-misses"), cpu=0)
    cyc = perf.perf_event_open(hw("cycles"), cpu=0)
    assert all(e.state == EventState.ACTIVE for e in (ins, br, miss, cyc))
    pmu.accrue(Work(instructions=1000, branches=100, branch_misses=7, cycles=3000).counts, 0, False)
    pmu.accrue(Work(instructions=500, branches=50, cpl=3).counts, 3, False)
    assert ins.read().value == 1500
    assert br.read().value == 50
    assert miss.read().value == 7
    assert cyc.read().value == 3500
    ins.disable()
    pmu.accrue(Work(instructions=999).counts, 0, False)
    assert ins.read().value == 1500
    ins.enable()
    pmu.accrue(Work(instructions=1).counts, 0, False)
    assert ins.read().value == 1501


def test_counter_mask_and_width(model: AmdCpuModel) -> None:
    _, _, port = make_env(model)
    d = AmdPerfDriver()
    assert d.counter_mask(port) == (1 << model.caps.gp_counters) - 1
    assert d.width(port, 0) == 48


def test_guest_counter_mask_follows_guest_cpuid() -> None:
    m = make_model("amd/zen4")
    pmu = m.make_pmu(GuestPmuConfig(gp_counters=3))
    port = PhysicalPort(m, pmu, m.cpuid_table(GuestPmuConfig(gp_counters=3)))
    assert AmdPerfDriver().counter_mask(port) == 0b111


def test_generic_encodings_per_family() -> None:
    d = AmdPerfDriver()
    _, _, zport = make_env(make_model("amd/zen4"))
    _, _, kport = make_env(make_model("amd/k8"))
    z = {n: d.hw_event(hw(n), zport) for n in ("cache-references", "cache-misses", "instructions")}
    assert es.event_select(z["cache-references"].config) == 0x60 and es.unit_mask(z["cache-references"].config) == 0xFF
    assert z["cache-misses"].config & 0xFFFF == 0x0964
    assert z["cache-references"].kind == EventKind.LLC_REFERENCES
    assert z["instructions"].kind == EventKind.INSTRUCTIONS
    k = d.hw_event(hw("cache-misses"), kport)
    assert k.config & 0xFFFF == 0x077E and k.kind == EventKind.LLC_MISSES


@pytest.mark.parametrize("name", ["ref-cycles", "bus-cycles"])
def test_no_ref_cycles_on_amd(name: str) -> None:
    _, _, port = make_env(make_model("amd/zen4"))
    with pytest.raises(PerfError) as e:
        AmdPerfDriver().hw_event(hw(name), port)
    assert e.value.errno == errno.ENOENT


def test_branch_stack_and_precise_unsupported() -> None:
    perf, _, _ = make_env(make_model("amd/zen4"))
    with pytest.raises(PerfError) as e:
        perf.perf_event_open(hw("branches", branch_sample_type=("any",)), cpu=0)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(PerfError) as e:
        perf.perf_event_open(hw("cycles", precise_ip=1), cpu=0)
    assert e.value.errno == errno.EOPNOTSUPP


def test_raw_config_is_masked_to_amd64_raw_event_mask() -> None:
    _, _, port = make_env(make_model("amd/zen4"))
    h = AmdPerfDriver().hw_event(hw(0xFFFF_FFFF_FFFF_FFFF), port)
    assert h.config & ~(es.RAW_EVENT_MASK | es.USR | es.OS) == 0
    h = AmdPerfDriver().hw_event(hw(es.encode(0x1C0, 0x01)), port)
    assert es.event_select(h.config) == 0x1C0 and h.kind is None


def test_exclude_guest_host_bits() -> None:
    _, _, port = make_env(make_model("amd/zen4"))
    d = AmdPerfDriver()
    assert d.hw_event(hw("cycles", exclude_guest=True), port).config & (es.HOST_ONLY | es.GUEST_ONLY) == es.HOST_ONLY
    assert d.hw_event(hw("cycles", exclude_host=True), port).config & (es.HOST_ONLY | es.GUEST_ONLY) == es.GUEST_ONLY
    both = d.hw_event(hw("cycles", exclude_host=True, exclude_guest=True), port)
    assert both.config & (es.HOST_ONLY | es.GUEST_ONLY | es.USR | es.OS) == 0


def test_exclude_guest_filters_guest_spans_on_the_physical_pmu() -> None:
    perf, pmu, _ = make_env(make_model("amd/zen4"))
    pmu.virtualization_enabled = True
    host_only = perf.perf_event_open(hw("instructions", exclude_guest=True), cpu=0)
    guest_only = perf.perf_event_open(hw("instructions", exclude_host=True), cpu=0)
    both = perf.perf_event_open(hw("instructions"), cpu=0)
    none = perf.perf_event_open(hw("instructions", exclude_guest=True, exclude_host=True), cpu=0)
    for n, g in [(10, False), (200, True), (3000, False), (40000, True)]:
        pmu.accrue(Work(instructions=n).counts, 0, g)
    assert (host_only.read().value, guest_only.read().value, both.read().value, none.read().value) == (
        3010,
        40200,
        43210,
        0,
    )


def test_large_increment_event_takes_an_even_counter() -> None:
    perf, _, port = make_env(make_model("amd/zen4"))
    d = perf.driver
    h = d.hw_event(hw(es.encode(0x003, 0xFF)), port)
    assert h.mask == 0b010101
    perf.perf_event_open(hw("instructions"), cpu=0)
    ev = perf.perf_event_open(hw(es.encode(0x003, 0xFF)), cpu=0)
    assert ev.idx is not None and ev.idx % 2 == 0
    _, _, kport = make_env(make_model("amd/k8"))
    assert AmdPerfDriver().hw_event(hw(es.encode(0x003, 0xFF)), kport).mask == 0b1111  # k8: unconstrained


def test_multiplexing_past_the_counters(model: AmdCpuModel) -> None:
    perf, _, _ = make_env(model)
    n = model.caps.gp_counters
    evs = [perf.perf_event_open(hw("instructions"), cpu=0) for _ in range(n + 1)]
    assert sum(e.state == EventState.ACTIVE for e in evs) == n
    assert perf.rotate(0)


def test_start_programs_extension_msrs_and_global_ctl() -> None:
    m = make_model("amd/zen4")
    perf, pmu, _ = make_env(m)
    pmu.wrmsr(GLOBAL_CTL, 0)
    ev = perf.perf_event_open(hw("instructions"), cpu=0)
    assert ev.idx is not None
    sel = pmu.rdmsr(pmu.eventsel_msr(pmu.gp[ev.idx]))  # type: ignore[arg-type]
    assert sel & es.EN and sel & es.INT
    assert pmu.rdmsr(GLOBAL_CTL) == 1 << ev.idx
    ev.disable()
    assert not pmu.rdmsr(pmu.eventsel_msr(pmu.gp[ev.idx or 0])) & es.EN  # type: ignore[arg-type]


def test_k8_driver_uses_k7_msrs() -> None:
    perf, pmu, _ = make_env(make_model("amd/k8"))
    ev = perf.perf_event_open(hw("branches"), cpu=0)
    assert ev.idx is not None
    assert pmu.rdmsr(0xC0010000 + ev.idx) & es.EN


@pytest.mark.parametrize("name", ["amd/k8", "amd/zen2", "amd/zen4"])
@pytest.mark.parametrize("guest", [False, True])
def test_sampling_overflow_and_ack(name: str, guest: bool) -> None:
    m = make_model(name)
    perf, pmu, port = make_env(m, guest)
    seen: list[int] = []
    ev = perf.perf_event_open(
        hw("instructions", sample_period=1000), cpu=0, overflow_handler=lambda e, o: seen.append(o)
    )
    assert ev.idx is not None
    ovf = pmu.accrue(Work(instructions=1234).counts, 0, False)
    assert ovf is not None and [(p.idx, o) for p, o in ovf] == [(ev.idx, 234)]
    for p, over in ovf:
        assert pmu.raise_overflow(p) is True  # perf programs INT
        assert perf.handle_overflow(0, p.idx, over)
    assert seen == [234] and ev.samples == 1
    assert pmu.global_status == 0  # acked through STATUS_CLR on PerfMonV2, none without
    if m.data.perfmon_v2:
        assert pmu.rdmsr(GLOBAL_STATUS) == 0
    assert ev.read().value == 1234
    pmu.accrue(Work(instructions=765).counts, 0, False)
    assert ev.read().value == 1999
