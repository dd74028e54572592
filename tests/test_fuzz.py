"""The fuzz suite (issue 15, "A fuzz suite in the project"): random guest and host programs per
vendor x mode x placement (and facilities where they apply), checked against oracles:

* robustness: only GuestFault (#GP), PerfError and ConfigError (StateError) escape, whatever
  the guest writes/reads (PMU MSRs and random MSRs and values), RDPMC with random ECX, CPUID,
  execute, XSAVES/XRSTORS with random masks and corrupted areas, save/restore (direct and
  through JSON) onto fresh vCPUs, host perf open/enable/disable/close, event filters;
* isolation: no guest read ever returns a host counter value (distinctive host counts are
  planted first);
* the counting window of DESIGN §5, exactly, with no contention: after
  wrmsr(GLOBAL_CTRL, enable), execute(Work(N, B)), wrmsr(GLOBAL_CTRL, 0) an instructions
  counter reads N + 1 and a branches counter B, whatever exits happened in between;
* determinism: the same seed gives the same reads;
* migration: a restored vCPU reads what the source reads, op for op.

Size: VPMU_FUZZ_EXAMPLES examples per property and combination (default 4, derandomized, so
CI is reproducible); set it higher for a real fuzzing run (random, see docs/testing-plugins.md
for how long it takes).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vpmu_core as vpmu
from vpmu_core import ConfigError, GuestFault, PerfError, PerfEventAttr, Work
from vpmu_core.hv.xsave import XsaveArea

pytest.importorskip("vpmu_intel_arch")
pytest.importorskip("vpmu_amd_perfmon")
pytest.importorskip("vpmu_intel_archlbr")
pytest.importorskip("vpmu_mode_emulated")
pytest.importorskip("vpmu_mode_mediated")

EXAMPLES = int(os.environ.get("VPMU_FUZZ_EXAMPLES", "4"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="VPMU_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

#: (cpu model, mode, mode options, facilities)
COMBOS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("intel/icelake", "emulated", {}, ()),
    ("intel/icelake", "emulated", {}, ("lbr",)),
    ("intel/sapphirerapids", "emulated", {}, ("arch_lbr",)),
    ("amd/zen4", "emulated", {}, ()),
    *[("intel/icelake", "mediated", {"switch_at": s}, ()) for s in ("run_loop", "exit", "vcpu_run")],
    *[("amd/zen4", "mediated", {"switch_at": s}, ()) for s in ("run_loop", "exit", "vcpu_run")],
    ("intel/sapphirerapids", "mediated", {"switch_at": "run_loop", "facilities": "passthrough"}, ("arch_lbr",)),
]
IDS = [f"{c}-{m}-{o.get('switch_at', '')}{'-' + '+'.join(f) if f else ''}" for c, m, o, f in COMBOS]
ALLOWED = (GuestFault, PerfError, ConfigError)
USR, OS, INT, EN = 1 << 16, 1 << 17, 1 << 20, 1 << 22
EVENTS = {"intel": (0xC0, 0xC4, 0x3C), "amd": (0xC0, 0xC2, 0x76)}
#: planted host counts: every host counter the host uses holds a value in this window
PLANT_LO = 0x0BAD_F00D
PLANT_HI = PLANT_LO + (1 << 24)
RANDOM_MSRS = (0x10, 0x1B, 0x3A, 0xC0000080, 0x40000000, 0x4B564D00, 0xC0010000, 0x391, 0x392, 0x390)

u64 = st.integers(0, (1 << 64) - 1)
values = st.one_of(
    u64,
    st.integers(0, (1 << 48) - 1),
    st.sampled_from([0, 1, 0xFFFF_FFFF, (1 << 48) - 1, (1 << 64) - 1]),
    st.builds(
        lambda e, f: e | f,
        st.sampled_from([0xC0, 0xC4, 0xC2, 0x3C, 0x76, 0x2E]),
        st.sampled_from([USR | OS | EN, USR | OS | EN | INT, OS | EN, USR | EN, 0]),
    ),
)
guest_op = st.one_of(
    st.tuples(st.just("wrmsr"), st.integers(0, 10**6), values),
    st.tuples(st.just("rdmsr"), st.integers(0, 10**6)),
    st.tuples(st.just("wrmsr_any"), st.one_of(st.sampled_from(RANDOM_MSRS), st.integers(0, (1 << 32) - 1)), values),
    st.tuples(st.just("rdmsr_any"), st.one_of(st.sampled_from(RANDOM_MSRS), st.integers(0, (1 << 32) - 1))),
    st.tuples(
        st.just("rdpmc"),
        st.one_of(st.integers(0, 8), st.integers(1 << 30, (1 << 30) + 4), st.integers(0, (1 << 32) - 1)),
    ),
    st.tuples(
        st.just("cpuid"), st.sampled_from([0, 1, 6, 7, 0xA, 0xD, 0x1C, 0x80000001, 0x80000022]), st.integers(0, 2)
    ),
    st.tuples(st.just("execute"), st.integers(0, 2_000_000), st.integers(0, 200_000), st.sampled_from([0, 3])),
    st.tuples(st.just("cpl"), st.sampled_from([0, 3]), st.booleans()),
    st.tuples(st.just("xsaves"), st.sampled_from([0, 1 << 15, (1 << 15) | 1, (1 << 64) - 1, 1 << 8])),
    st.tuples(st.just("xrstors"), st.sampled_from([0, 1 << 15, (1 << 64) - 1, 1 << 70]), st.integers(0, 4)),
)
host_op = st.one_of(
    st.tuples(
        st.just("host_open"),
        st.sampled_from(["cycles", "instructions", "branches"]),
        st.booleans(),
        st.booleans(),
        st.sampled_from([0, 1, -1]),
    ),
    st.tuples(st.sampled_from(["host_enable", "host_disable", "host_close"]), st.integers(0, 8)),
    st.tuples(
        st.just("filter"),
        st.sampled_from(["allow", "deny"]),
        st.lists(st.sampled_from([0xC0, 0xC4, 0xC2, 0x3C, 0x76]), max_size=3),
        st.integers(0, 7),
    ),
    st.tuples(st.just("save_restore"), st.booleans()),
)
programs = st.lists(st.one_of(guest_op, host_op), min_size=1, max_size=25)
guest_programs = st.lists(guest_op, min_size=1, max_size=20)


# ---- helpers ---------------------------------------------------------------------------------


def compose(combo: tuple[str, str, dict[str, Any], tuple[str, ...]], seed: int = 0) -> Any:
    cpu, mode, options, facilities = combo
    return vpmu.compose(cpu=cpu, mode=mode, cpus=2, mode_options=options, facilities=facilities, seed=seed)


def new_vcpu(host: Any, pin: int, rate: int = 30_000) -> Any:
    vm = host.create_vm(vcpus=1, pin=[pin], exits=vpmu.ExitProfile(rate_per_s=rate, fastpath_share=0.4))
    return vm.vcpus[0]


def msr_pool(v: Any) -> list[int]:
    pool = set(v.pmu.state_msrs()) | set(v.pmu.global_msrs().values()) | {0x834, 0x390}
    for f in v.facilities.values():
        pool |= set(f.state_msrs())
    return sorted(pool)


def plant_host(host: Any) -> list[Any]:
    """Host per-CPU pinned events on both CPUs and host work of PLANT_LO instructions there,
    run to completion before any VM: every counter the host uses then holds a planted value."""
    evs = [
        host.perf_event_open(PerfEventAttr(config="instructions", pinned=True, exclude_guest=True), pid=-1, cpu=c)
        for c in range(2)
    ]
    for c in range(2):
        host.spawn_task(f"plant{c}", cpu=c).execute(Work(instructions=PLANT_LO, cycles=PLANT_LO))
    host.advance(ns=PLANT_LO * 1_000_000_000 // host.freq_hz + 1_000_000)
    assert all(PLANT_LO <= e.read().value < PLANT_HI for e in evs)
    return evs


class Runner:
    """Applies ops to a vCPU and records what the guest observed (values and faults)."""

    def __init__(self, host: Any, v: Any) -> None:
        self.host = host
        self.v = v
        self.pool = msr_pool(v)
        self.host_events: list[Any] = []
        self.areas: list[Any] = []
        self.seen: list[Any] = []

    def guest_read(self, value: int, what: str) -> int:
        assert not PLANT_LO <= value < PLANT_HI, f"{what} returned a host counter value {value:#x}"
        return value

    def run(self, op: tuple[Any, ...]) -> None:
        try:
            self.seen.append((op[0], self._apply(op)))
        except ALLOWED as e:
            self.seen.append((op[0], type(e).__name__, getattr(e, "errno", None) or getattr(e, "vector", None)))

    def _apply(self, op: tuple[Any, ...]) -> Any:
        v = self.v
        kind = op[0]
        if kind == "wrmsr":
            return v.wrmsr(self.pool[op[1] % len(self.pool)], op[2])
        if kind == "rdmsr":
            msr = self.pool[op[1] % len(self.pool)]
            return self.guest_read(v.rdmsr(msr), f"rdmsr {msr:#x}")
        if kind == "wrmsr_any":
            return v.wrmsr(op[1], op[2])
        if kind == "rdmsr_any":
            return self.guest_read(v.rdmsr(op[1]), f"rdmsr {op[1]:#x}")
        if kind == "rdpmc":
            return self.guest_read(v.rdpmc(op[1]), f"rdpmc {op[1]:#x}")
        if kind == "cpuid":
            return v.cpuid(op[1], op[2])
        if kind == "execute":
            return v.execute(Work(instructions=op[1], branches=min(op[2], op[1]), cpl=op[3]))
        if kind == "cpl":
            v.cpl, v.cr4_pce = op[1], op[2]
            return None
        if kind == "xsaves":
            area = v.xsaves(op[1])
            self.areas.append(area)
            return sorted(area.components)
        if kind == "xrstors":
            return v.xrstors(self._area(op[2]), op[1])
        if kind == "host_open":
            config, pinned, exclude_guest, cpu = op[1:]
            attr = PerfEventAttr(config=config, pinned=pinned, exclude_guest=exclude_guest)
            pid = v.task.pid if cpu == -1 else -1
            self.host_events.append(self.host.perf_event_open(attr, pid=pid, cpu=cpu))
            return None
        if kind in ("host_enable", "host_disable", "host_close"):
            if not self.host_events:
                return None
            ev = self.host_events[op[1] % len(self.host_events)]
            return getattr(ev, kind.removeprefix("host_"))()
        if kind == "filter":
            return v.vm.set_pmu_event_filter(op[1], op[2], op[3])
        if kind == "save_restore":
            state = v.save_state()
            if op[1]:
                state = json.loads(json.dumps(state))
            dst = new_vcpu(self.host, 1)
            dst.restore_state(state)
            return None
        raise AssertionError(op)

    def _area(self, k: int) -> Any:
        """An area this vCPU saved, or one corrupted in some way, or not an area at all."""
        if k == 4 or not self.areas:
            return b"\x00" * 64
        base = self.areas[-1]
        comps = dict(base.components)
        if k == 1:
            return XsaveArea(xstate_bv=base.xstate_bv, xcomp_bv=base.xcomp_bv & ~(1 << 63), components=comps)
        if k == 2:
            return XsaveArea(
                xstate_bv=base.xstate_bv | (1 << 15),
                xcomp_bv=base.xcomp_bv,
                components={c: b[:7] for c, b in comps.items()},
            )
        if k == 3:
            return XsaveArea(
                xstate_bv=(1 << 64) - 1,
                xcomp_bv=base.xcomp_bv,
                components={c: bytes(x ^ 0xFF for x in b) for c, b in comps.items()},
            )
        return base


# ---- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", COMBOS, ids=IDS)
@FUZZ
@given(program=programs)
def test_only_api_errors_escape_and_no_guest_read_is_a_host_value(combo: Any, program: list[Any]) -> None:
    host = compose(combo)
    plant_host(host)
    r = Runner(host, new_vcpu(host, 0))
    for op in program:
        r.run(op)
    assert host.leaks.leaks == []


@pytest.mark.parametrize("combo", COMBOS, ids=IDS)
@FUZZ
@given(
    n=st.integers(0, 5_000_000),
    b=st.integers(0, 500_000),
    cpl=st.sampled_from([0, 3]),
    rate=st.sampled_from([0, 2_000, 50_000, 400_000]),
    fast=st.sampled_from([0.0, 0.5, 0.95]),
    before=guest_programs,
)
def test_counting_window_is_exact_without_contention(
    combo: Any, n: int, b: int, cpl: int, rate: int, fast: float, before: list[Any]
) -> None:
    """DESIGN §5: whatever the guest did before (random ops), a freshly programmed
    instructions counter and branches counter read N + 1 and B over the window."""
    host = compose(combo)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=rate, fastpath_share=fast))
    v = vm.vcpus[0]
    r = Runner(host, v)
    for op in before:
        r.run(op)
    v.cpl, v.cr4_pce = 0, False
    pmu = v.pmu
    ctrl = pmu.global_msrs().get("ctrl")
    instr, branch, _ = EVENTS[pmu.vendor]
    if ctrl is None:
        pytest.skip("no GLOBAL_CTRL: the window needs one")
    v.wrmsr(ctrl, 0)
    for i, code in ((0, instr), (1, branch)):
        p = pmu.gp[i]
        v.wrmsr(pmu.eventsel_msr(p), 0)
        v.wrmsr(pmu.counter_msrs(p)[0], 0)
        v.wrmsr(pmu.eventsel_msr(p), code | USR | OS | EN)
    v.wrmsr(ctrl, 0b11)
    v.execute(Work(instructions=n, branches=min(b, n), cpl=cpl))
    v.wrmsr(ctrl, 0)
    assert v.rdmsr(pmu.counter_msrs(pmu.gp[0])[0]) == n + 1
    assert v.rdmsr(pmu.counter_msrs(pmu.gp[1])[0]) == min(b, n)


@pytest.mark.parametrize("combo", COMBOS, ids=IDS)
@FUZZ
@given(program=programs, seed=st.integers(0, 2**16))
def test_same_seed_same_reads(combo: Any, program: list[Any], seed: int) -> None:
    seen = []
    for _ in range(2):
        host = compose(combo, seed=seed)
        r = Runner(host, new_vcpu(host, 0))
        for op in program:
            r.run(op)
        seen.append((r.seen, [c.now for c in host.cpus]))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("combo", COMBOS, ids=IDS)
@FUZZ
@given(before=guest_programs, after=guest_programs, via_json=st.booleans())
def test_restored_vcpu_reads_what_the_source_reads(
    combo: Any, before: list[Any], after: list[Any], via_json: bool
) -> None:
    host = compose(combo)
    src = Runner(host, new_vcpu(host, 0))
    for op in before:
        src.run(op)
    state = src.v.save_state()
    if via_json:
        state = json.loads(json.dumps(state))
    dst = Runner(host, new_vcpu(host, 1))
    dst.areas = list(src.areas)  # XSAVE areas are guest memory: they migrate with it
    dst.v.restore_state(state)
    assert dst.pool == src.pool
    for op in [("rdmsr", i) for i in range(len(src.pool))] + after:
        src.run(op)
        dst.run(op)
        assert dst.seen[-1] == src.seen[-1], f"after {op}: source {src.seen[-1]}, restored {dst.seen[-1]}"


#: guest instructions that do not touch the counting window's counters: mostly #GP
#: (random and unknown MSRs, reserved LVTPC bits, LBR MSRs without the LBR, bad RDPMC indexes)
window_op = st.one_of(
    st.tuples(st.just("wrmsr_any"), st.sampled_from([0x834, 0x40000000, 0x1DB, 0x14CE, 0x10]), values),
    st.tuples(st.just("rdmsr_any"), st.one_of(st.sampled_from([0x40000000, 0x1DB, 0x14CE, 0x4B564D00]), u64)),
    st.tuples(st.just("rdpmc"), st.one_of(st.integers(0, 8), st.integers(0, (1 << 32) - 1))),
    st.tuples(st.just("cpuid"), st.sampled_from([0, 0xA, 0x80000001]), st.integers(0, 1)),
)

#: DESIGN §5 "one that faults (#GP) does not retire and is not counted": KVM injects the
#: fault and does not skip the instruction, so kvm_skip_emulated_instruction() ->
#: kvm_pmu_instruction_retired() is never reached (the reserved-LVTPC write, unknown MSRs,
#: LBR MSRs without the facility).
FAULT_COMBOS = [pytest.param(c, id=i) for c, i in zip(COMBOS, IDS, strict=True)]


@pytest.mark.parametrize("combo", FAULT_COMBOS)
@FUZZ
@given(n=st.integers(0, 3_000_000), ops=st.lists(window_op, max_size=12))
@example(n=1_000, ops=[("wrmsr_any", 0x834, 1 << 18)])  # reserved LVTPC bit: #GP everywhere
def test_faulting_instructions_do_not_retire(combo: Any, n: int, ops: list[Any]) -> None:
    """Inside the window: N + 1 + the instructions that completed; a #GP is not counted."""
    host = compose(combo)
    v = new_vcpu(host, 0)
    pmu = v.pmu
    ctrl = pmu.global_msrs()["ctrl"]
    p = pmu.gp[0]
    v.wrmsr(ctrl, 0)
    v.wrmsr(pmu.counter_msrs(p)[0], 0)
    v.wrmsr(pmu.eventsel_msr(p), EVENTS[pmu.vendor][0] | USR | OS | EN)
    v.wrmsr(ctrl, 1)
    v.execute(Work(instructions=n))
    r = Runner(host, v)
    for op in ops:
        r.run(op)
    completed = sum(1 for seen in r.seen if len(seen) == 2)
    v.wrmsr(ctrl, 0)
    assert v.rdmsr(pmu.counter_msrs(p)[0]) == n + 1 + completed, r.seen
