"""Conformance kit: base classes a vendor or mode plugin subclasses in its own tests.

    from vpmu_core.testing.conformance import VendorConformance

    class TestAcme(VendorConformance):
        plugin_name = "acme"          # the entry point name in group `vpmu.plugins`

The kit loads the plugin through its real entry point (so it also tests the packaging) and
runs the checks every vendor (or mode) must pass. Overriding a kit test is allowed only to
mark it xfail with a reason: put the test name in `expected_failures`. Test names are
stable: `expected_failures` keys depend on them.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from typing import Any, ClassVar

import pytest

from vpmu_core.errors import GuestFault, PerfError
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hv.kvm_caps import KVM_COMMON_PMU_MSRS
from vpmu_core.hw.pmc import sign_extend
from vpmu_core.markers import ENTRY_POINT_GROUP
from vpmu_core.perf.attr import PERF_HW_IDS, PerfEventAttr
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.testing.leakcheck import LeakChecker
from vpmu_core.testing.ports import PhysicalPort, StubCpu

UNKNOWN_MSR = 0x0BAD_C0DE
__all__ = ["ModeConformance", "PhysicalPort", "StubCpu", "VendorConformance", "load_plugin"]

#: the generic perf event names (`PerfEventAttr(type="hardware", config=...)`), Linux's
#: PERF_COUNT_HW_* in their numbering; a driver answers ENOENT for the ones its hardware has
#: no encoding for
GENERIC_EVENTS = PERF_HW_IDS
#: a span with every event kind non-zero and different, so a counter that counts the wrong
#: kind reads a wrong number
_KIND_SPAN = dict(
    instructions=40_003,
    cycles=50_021,
    ref_cycles=45_007,
    llc_references=3_001,
    llc_misses=1_009,
    branches=7_013,
    branch_misses=503,
    topdown_slots=200_087,
)


def load_plugin(name: str) -> Any:
    """Load a plugin module through its installed entry point."""
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        pytest.fail(f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r}: is the plugin installed?")
    return eps[0].load()


class _Kit:
    plugin_name: ClassVar[str] = ""
    expected_failures: ClassVar[dict[str, str]] = {}
    #: the plugin module itself, to run the kit on a plugin that is not installed (the
    #: packaging checks then fail: list them in `expected_failures`)
    plugin_module: ClassVar[Any] = None

    @pytest.fixture(autouse=True)
    def _xfail_expected(self, request: pytest.FixtureRequest) -> None:
        reason = self.expected_failures.get(request.node.originalname)
        if reason:
            request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))

    @pytest.fixture
    def plugin(self) -> Any:
        if self.plugin_module is not None:
            return self.plugin_module
        return load_plugin(self.plugin_name)


class VendorConformance(_Kit):
    """Checks every vendor plugin passes, for every CPU model it registers."""

    #: "gp" (Intel: reserved bits #GP) or "drop" (AMD/KVM svm: silently dropped)
    reserved_policy: ClassVar[str] = "gp"
    #: models to check (default: every model the plugin registers)
    models: ClassVar[tuple[str, ...] | None] = None
    #: model name -> raw event configs tried besides the generic events, to reach counters
    #: no generic event uses (e.g. Intel fixed counter 3, topdown slots: 0x0400)
    raw_events: ClassVar[dict[str, tuple[int, ...]]] = {}
    #: how writes through a counter's legacy alias (`counter_msrs(pmc)[1:]`) behave:
    #: "sign_extend" (Intel IA32_PMCx: bit 31 extended to the counter width) or "full"
    #: (AMD K7 PERFCTRx: the same register). Must be declared when a counter has aliases.
    legacy_counter_writes: ClassVar[str | None] = None
    #: selector bits a guest must never set although the host has them (e.g. Intel
    #: AnyThread, bit 21: KVM's pmu->reserved_bits), beyond what the host rejects
    guest_reserved_selector_bits: ClassVar[int] = 0
    #: capability MSR -> the bits a guest may ever see there (e.g. Intel PERF_CAPABILITIES
    #: 0x345: LBR format and full-width writes); every other bit is host-only
    guest_capability_bits: ClassVar[dict[int, int]] = {}

    @pytest.fixture
    def catalog(self, plugin: Any) -> Any:
        return build_catalog([(self.plugin_name, plugin)], [])

    def _models(self, catalog: Any) -> list[Any]:
        names = self.models or tuple(sorted(catalog.cpu_models))
        return [catalog.cpu_models[n].factory({}) for n in names]

    @staticmethod
    def _guest_configs(model: Any) -> list[GuestPmuConfig]:
        """Non-default guest configurations every vendor must honour (clamped as it likes)."""
        caps = model.caps
        out = [
            GuestPmuConfig(gp_counters=1),
            GuestPmuConfig(gp_counters=max(1, caps.gp_counters - 1), fixed_counters=0),
        ]
        if caps.version > 1:
            out.append(GuestPmuConfig(version=caps.version - 1))
        return out

    @staticmethod
    def _indexes(pmu: Any, mask: int) -> list[int]:
        return [i for i in range(64) if mask >> i & 1 and pmu.pmc(i) is not None]

    # ---- packaging ------------------------------------------------------------------------
    def test_plugin_is_discoverable(self) -> None:
        names = [ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP)]
        assert self.plugin_name in names

    def test_plugin_listed_with_version(self) -> None:
        ep = next(ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.plugin_name)
        assert ep.dist is not None and ep.dist.version

    def test_plugin_implements_a_hook(self, catalog: Any) -> None:
        rec = catalog.plugin(self.plugin_name)
        assert rec is not None and rec.status == "loaded", rec
        assert "vpmu_register_cpu_models" in rec.hooks

    def test_names_are_lower_case_and_unique(self, catalog: Any) -> None:
        assert catalog.cpu_models, "the plugin registers no CPU model"
        for name in catalog.cpu_models:
            assert name == name.lower() and "/" in name, f"{name}: use vendor/model in lower case"
        assert not catalog.conflicts

    # ---- model consistency ------------------------------------------------------------------
    def test_cpuid_matches_pmu_layout(self, catalog: Any) -> None:
        """Host and default guest: the PMU has what CPUID enumerates, read through the
        driver from each one's own CPUID table."""
        for model in self._models(catalog):
            pmu = model.make_pmu(None)
            assert len(pmu.gp) == model.caps.gp_counters, model.name
            assert len(pmu.fixed) == model.caps.fixed_counters, model.name
            guest = model.resolve_guest(GuestPmuConfig())
            gpmu = model.make_pmu(guest)
            assert len(gpmu.gp) == guest.gp_counters, model.name
            assert len(gpmu.fixed) == (guest.fixed_counters or 0), model.name
            mask = model.make_driver().counter_mask(PhysicalPort(model, pmu))
            assert mask == pmu.all_counter_mask, (
                f"{model.name}: driver sees {mask:#x}, PMU has {pmu.all_counter_mask:#x}"
            )
            gmask = model.make_driver().counter_mask(PhysicalPort(model, gpmu, model.cpuid_table(guest)))
            assert gmask == gpmu.all_counter_mask, (
                f"{model.name}: the guest's CPUID enumerates {gmask:#x}, its PMU has {gpmu.all_counter_mask:#x}"
            )

    def test_guest_cpuid_matches_non_default_configs(self, catalog: Any) -> None:
        """The guest CPUID (CPUID.0AH or the vendor's leaves) follows the guest config, not
        the host: a guest driver enumerating it finds exactly the guest PMU's counters."""
        for model in self._models(catalog):
            for cfg in self._guest_configs(model):
                g = model.resolve_guest(cfg)
                gpmu = model.make_pmu(g)
                assert len(gpmu.gp) == g.gp_counters, (model.name, cfg)
                assert len(gpmu.fixed) == (g.fixed_counters or 0), (model.name, cfg)
                mask = model.make_driver().counter_mask(PhysicalPort(model, gpmu, model.cpuid_table(g)))
                assert mask == gpmu.all_counter_mask, (
                    f"{model.name} {cfg}: guest CPUID enumerates {mask:#x}, the guest PMU has {gpmu.all_counter_mask:#x}"
                )

    def test_guest_config_is_clamped_to_host(self, catalog: Any) -> None:
        for model in self._models(catalog):
            g = model.resolve_guest(GuestPmuConfig(gp_counters=64, version=99))
            assert g.gp_counters <= model.caps.gp_counters
            assert g.version <= model.caps.version

    def test_unknown_msr_is_gp(self, catalog: Any) -> None:
        for model in self._models(catalog):
            for pmu in (model.make_pmu(None), model.make_pmu(model.resolve_guest(GuestPmuConfig()))):
                with pytest.raises(GuestFault) as e:
                    pmu.wrmsr(UNKNOWN_MSR, 0)
                assert e.value.vector == 13
                with pytest.raises(GuestFault):
                    pmu.rdmsr(UNKNOWN_MSR)

    def test_reserved_selector_bits_follow_policy(self, catalog: Any) -> None:
        for model in self._models(catalog):
            pmu = model.make_pmu(model.resolve_guest(GuestPmuConfig()))
            sel = pmu.eventsel_msr(pmu.gp[0])
            if self.reserved_policy == "gp":
                with pytest.raises(GuestFault):
                    pmu.wrmsr(sel, (1 << 64) - 1)
            else:
                pmu.wrmsr(sel, (1 << 64) - 1)
                assert pmu.rdmsr(sel) != (1 << 64) - 1

    @staticmethod
    def _probe_bits(pmu: Any, msr: int) -> tuple[int, int]:
        """Write each bit alone: (bits accepted, bits accepted and kept)."""
        accepted = kept = 0
        for b in range(64):
            try:
                pmu.wrmsr(msr, 1 << b)
            except GuestFault:
                continue
            accepted |= 1 << b
            if pmu.rdmsr(msr) >> b & 1:
                kept |= 1 << b
            pmu.wrmsr(msr, 0)
        return accepted, kept

    def _control_registers(self, pmu: Any) -> dict[str, int]:
        regs = {f"selector{i}": pmu.eventsel_msr(p) for i, p in enumerate(pmu.gp)}
        fc = pmu.fixed_ctrl_msr()
        if fc is not None and pmu.fixed:
            regs["fixed_ctrl"] = fc
        ctrl = pmu.global_msrs().get("ctrl")
        if ctrl is not None:
            regs["global_ctrl"] = ctrl
        return {k: v for k, v in regs.items() if v is not None}

    def test_reserved_bits_tried_one_at_a_time(self, catalog: Any) -> None:
        """Every bit of every selector, the fixed control and the global control, alone:
        under the "gp" policy a bit is either #GP or kept (never silently dropped; "drop"
        vendors, AMD, drop reserved bits of every PMU MSR: kvm_pmu_set_msr); a guest
        keeps no bit the host would not keep, nor one the vendor declares guest-reserved."""
        for model in self._models(catalog):
            host = model.make_pmu(None)
            guest = model.make_pmu(model.resolve_guest(GuestPmuConfig()))
            host_regs = self._control_registers(host)
            for role, msr in self._control_registers(guest).items():
                accepted, kept = self._probe_bits(guest, msr)
                if self.reserved_policy == "gp":
                    dropped = accepted & ~kept
                    assert not dropped, f"{model.name} guest {role}: bits {dropped:#x} accepted but dropped (no #GP)"
                if role in host_regs:
                    h_accepted, h_kept = self._probe_bits(host, host_regs[role])
                    extra = kept & ~h_kept
                    assert not extra, f"{model.name} guest {role}: keeps bits {extra:#x} the host rejects"
                if role.startswith("selector"):
                    bad = kept & self.guest_reserved_selector_bits
                    assert not bad, f"{model.name} guest {role}: accepts guest-reserved bits {bad:#x}"

    def test_read_only_registers_stay_read_only(self, catalog: Any) -> None:
        """GLOBAL_STATUS (role "status") cannot be written by the guest or the host kernel:
        the write #GPs or is ignored, the value stays."""
        for model in self._models(catalog):
            for pmu in (model.make_pmu(None), model.make_pmu(model.resolve_guest(GuestPmuConfig()))):
                msr = pmu.global_msrs().get("status")
                if msr is None or not pmu.gp:
                    continue
                pmu.raise_overflow(pmu.gp[0])
                before = pmu.rdmsr(msr)
                assert before, f"{model.name}: an overflow sets no GLOBAL_STATUS bit"
                for value in (0, before ^ 0b10, pmu.all_counter_mask):
                    try:
                        pmu.wrmsr(msr, value)
                    except GuestFault:
                        pass
                    assert pmu.rdmsr(msr) == before, f"{model.name}: GLOBAL_STATUS written to {value:#x}"

    def test_legacy_counter_writes_sign_extend(self, catalog: Any) -> None:
        """Writes through a counter's legacy alias behave as declared: Intel IA32_PMCx
        sign-extends bit 31 to the counter width; AMD's K7 aliases write the full value."""
        for model in self._models(catalog):
            for pmu in (model.make_pmu(None), model.make_pmu(model.resolve_guest(GuestPmuConfig()))):
                for pmc in pmu.pmcs:
                    msrs = pmu.counter_msrs(pmc)
                    if len(msrs) < 2:
                        continue
                    assert self.legacy_counter_writes in ("sign_extend", "full"), (
                        "counters have aliases: declare legacy_counter_writes = 'sign_extend' or 'full'"
                    )
                    for alias in msrs[1:]:
                        for value in (0x8000_1234, 0x1234):
                            pmu.wrmsr(alias, value)
                            want = (
                                sign_extend(value, 32, pmc.width)
                                if self.legacy_counter_writes == "sign_extend"
                                else value & pmc.mask
                            )
                            got = pmu.rdmsr(msrs[0])
                            assert got == want, f"{model.name} {alias:#x} <- {value:#x}: reads {got:#x}, want {want:#x}"

    def test_guest_capability_msrs_hide_host_only_bits(self, catalog: Any) -> None:
        """A guest's capability MSRs (`guest_capability_bits`) show no host-only bit and
        nothing the host itself lacks, in the default and the non-default configs."""
        for model in self._models(catalog):
            host = model.make_pmu(None)
            for cfg in (GuestPmuConfig(), *self._guest_configs(model)):
                guest = model.make_pmu(model.resolve_guest(cfg))
                for msr, allowed in self.guest_capability_bits.items():
                    if not guest.has_msr(msr):
                        continue
                    value = guest.rdmsr(msr)
                    assert not value & ~allowed, f"{model.name} {cfg}: guest MSR {msr:#x} shows {value & ~allowed:#x}"
                    if host.has_msr(msr):
                        assert not value & ~host.rdmsr(msr), f"{model.name}: guest {msr:#x} shows what the host lacks"

    def test_selector_aliases_are_declared(self, catalog: Any) -> None:
        """`eventsel_msrs(pmc)` names every MSR of a GP counter's selector, `eventsel_msr`
        first: each writes that counter's selector and no other; no other MSR of the PMU
        (found by writing through every MSR that mirrors the selector) writes it; and
        every selector-like MSR of `control_msrs()` (the fixed control aside) is declared.
        Modes map guest selector writes by it: an undeclared alias is a write no mode
        programs."""
        for model in self._models(catalog):
            for pmu in (model.make_pmu(None), model.make_pmu(model.resolve_guest(GuestPmuConfig()))):
                declared: dict[int, int] = {}
                for pmc in pmu.gp:
                    msrs = pmu.eventsel_msrs(pmc)
                    assert msrs and msrs[0] == pmu.eventsel_msr(pmc), f"{model.name}: {msrs} for counter {pmc.idx}"
                    _, kept = self._probe_bits(pmu, msrs[0])
                    one = kept & -kept
                    two = (kept & ~one) & -(kept & ~one)
                    assert one and two, f"{model.name}: selector {msrs[0]:#x} keeps fewer than two bits"
                    for msr in msrs:
                        assert msr not in declared, f"{model.name}: {msr:#x} declared for two counters"
                        declared[msr] = pmc.idx
                        before = {p.idx: pmu.rdmsr(pmu.eventsel_msr(p)) for p in pmu.gp if p is not pmc}
                        pmu.wrmsr(msr, one)
                        assert pmu.rdmsr(msrs[0]) == one, f"{model.name}: {msr:#x} is not counter {pmc.idx}'s selector"
                        after = {p.idx: pmu.rdmsr(pmu.eventsel_msr(p)) for p in pmu.gp if p is not pmc}
                        assert after == before, f"{model.name}: {msr:#x} also wrote another selector"
                        pmu.wrmsr(msr, 0)
                    # an MSR that mirrors the selector and writes it is an alias: it must be declared
                    pmu.wrmsr(msrs[0], one)
                    mirrors = [m for m in pmu.msr_indexes if m not in msrs and _reads(pmu, m) == one]
                    for m in mirrors:
                        try:
                            pmu.wrmsr(m, two)
                        except GuestFault:
                            continue
                        if pmu.rdmsr(msrs[0]) == two:
                            raise AssertionError(
                                f"{model.name}: {m:#x} writes counter {pmc.idx}'s selector but is not in eventsel_msrs()"
                            )
                        pmu.wrmsr(msrs[0], one)
                    pmu.wrmsr(msrs[0], 0)
                undeclared = set(pmu.control_msrs()) - set(declared) - {pmu.fixed_ctrl_msr()}
                assert not undeclared, (
                    f"{model.name}: selector MSRs {sorted(map(hex, undeclared))} not in any eventsel_msrs()"
                )

    def test_counters_beyond_the_guest_count_are_gp(self, catalog: Any) -> None:
        for model in self._models(catalog):
            if model.caps.gp_counters < 2:
                continue
            host = model.make_pmu(None)
            small = model.make_pmu(model.resolve_guest(GuestPmuConfig(gp_counters=1)))
            own = {m for p in small.pmcs for m in small.counter_msrs(p)}
            for msr in host.counter_msrs(host.gp[len(small.gp)] if len(small.gp) < len(host.gp) else host.gp[1]):
                if len(small.gp) >= len(host.gp) or msr in own:
                    continue  # the vendor gives this guest every counter, or the MSR is one of its own
                with pytest.raises(GuestFault):
                    small.rdmsr(msr)
                with pytest.raises(GuestFault):
                    small.wrmsr(msr, 0)

    # ---- counting through the vendor driver ---------------------------------------------------
    def _count(self, model: Any, attr: PerfEventAttr, spans: list[Work]) -> int:
        pmu = model.make_pmu(None)
        port = PhysicalPort(model, pmu)
        driver = model.make_driver()
        hw = driver.hw_event(attr, port)
        idx = next(i for i in range(64) if hw.mask >> i & 1 and pmu.pmc(i) is not None)
        driver.start(port, hw, idx, 0)
        for w in spans:
            pmu.accrue(w.counts, w.cpl, False)
        return driver.stop(port, hw, idx)

    def test_driver_counts_exactly(self, catalog: Any) -> None:
        spans = [Work(instructions=12_345, branches=678, cpl=0), Work(instructions=1_000, branches=10, cpl=3)]
        for model in self._models(catalog):
            assert self._count(model, PerfEventAttr(config="instructions"), spans) == 13_345, model.name
            assert self._count(model, PerfEventAttr(config="branches"), spans) == 688, model.name
            assert self._count(model, PerfEventAttr(config="instructions", exclude_user=True), spans) == 12_345
            assert self._count(model, PerfEventAttr(config="instructions", exclude_kernel=True), spans) == 1_000

    def test_every_counter_counts_its_event_exactly(self, catalog: Any) -> None:
        """Every counter index the PMU has, fixed ones included, counts each event the
        driver may put on it exactly (generic events, then `raw_events`)."""
        spans = [Work(**_KIND_SPAN, cpl=0), Work(**{k: v // 3 for k, v in _KIND_SPAN.items()}, cpl=3)]
        for model in self._models(catalog):
            attrs = [PerfEventAttr(config=n) for n in GENERIC_EVENTS]
            attrs += [PerfEventAttr(type="raw", config=c) for c in self.raw_events.get(model.name, ())]
            covered = 0
            for attr in attrs:
                try:
                    hw0 = model.make_driver().hw_event(attr, PhysicalPort(model, model.make_pmu(None)))
                except PerfError:
                    continue
                if hw0.kind is None:
                    continue
                want = sum(w.counts[hw0.kind] for w in spans)
                for idx in self._indexes(model.make_pmu(None), hw0.mask):
                    pmu = model.make_pmu(None)
                    port = PhysicalPort(model, pmu)
                    driver = model.make_driver()
                    hw = driver.hw_event(attr, port)
                    driver.start(port, hw, idx, 0)
                    for w in spans:
                        pmu.accrue(w.counts, w.cpl, False)
                    got = driver.stop(port, hw, idx)
                    assert got == want, f"{model.name} {attr.label()} on counter {idx:#x}: {got}, want {want}"
                    covered |= 1 << idx
            missing = model.make_pmu(None).all_counter_mask & ~covered
            assert not missing, f"{model.name}: no event reaches counters {missing:#x} (add raw_events)"

    def test_rdpmc_reads_every_counter(self, catalog: Any) -> None:
        """RDPMC with `rdpmc_ecx(pmc)` reads that counter and no other (host and guest)."""
        for model in self._models(catalog):
            for pmu in (model.make_pmu(None), model.make_pmu(model.resolve_guest(GuestPmuConfig()))):
                want = {}
                for n, pmc in enumerate(pmu.pmcs):
                    want[pmc.idx] = (0x1234_5601 + 0x101 * n) & pmc.mask
                    pmu.wrmsr(pmu.counter_msrs(pmc)[0], want[pmc.idx])
                for pmc in pmu.pmcs:
                    got = pmu.rdpmc(pmu.rdpmc_ecx(pmc))
                    assert got == want[pmc.idx], f"{model.name} RDPMC of counter {pmc.idx:#x}: {got:#x}"

    def test_exclude_guest_and_exclude_host_are_honoured(self, catalog: Any) -> None:
        """Through the driver's entry-load split on the physical PMU: exclude_guest counts
        only host-mode work, exclude_host only guest-mode work, neither counts both."""
        host_w = Work(instructions=30_011, cpl=0)
        guest_w = Work(instructions=20_003, cpl=0)
        h, g = 2 * host_w.instructions, guest_w.instructions
        cases: tuple[tuple[dict[str, Any], int], ...] = (
            ({}, h + g),
            ({"exclude_guest": True}, h),
            ({"exclude_host": True}, g),
        )
        for model in self._models(catalog):
            for kw, want in cases:
                attr = PerfEventAttr(config="instructions", **kw)
                hw0 = model.make_driver().hw_event(attr, PhysicalPort(model, model.make_pmu(None)))
                for idx in self._indexes(model.make_pmu(None), hw0.mask):
                    pmu = model.make_pmu(None)
                    pmu.virtualization_enabled = True  # KVM has VMs (AMD: EFER.SVME)
                    port = PhysicalPort(model, pmu)
                    driver = model.make_driver()
                    hw = driver.hw_event(attr, port)
                    driver.start(port, hw, idx, 0)
                    pmu.accrue(host_w.counts, 0, False)
                    pmu.set_guest_mode(True)
                    pmu.accrue(guest_w.counts, 0, True)
                    pmu.set_guest_mode(False)
                    pmu.accrue(host_w.counts, 0, False)
                    got = driver.stop(port, hw, idx)
                    assert got == want, f"{model.name} {attr.label()} {kw} on counter {idx:#x}: {got}, want {want}"

    def test_driver_overflow_raises_pmi(self, catalog: Any) -> None:
        for model in self._models(catalog):
            pmu = model.make_pmu(None)
            port = PhysicalPort(model, pmu)
            driver = model.make_driver()
            hw = driver.hw_event(PerfEventAttr(config="instructions", sample_period=100), port)
            idx = next(i for i in range(64) if hw.mask >> i & 1 and pmu.pmc(i) is not None)
            mask = (1 << driver.width(port, idx)) - 1
            driver.start(port, hw, idx, (-100) & mask)
            ov = pmu.accrue(Work(instructions=105).counts, 0, False)
            assert ov and ov[0][0].idx == idx and ov[0][1] == 5, (model.name, ov)
            assert pmu.raise_overflow(ov[0][0]), f"{model.name}: the driver must enable the overflow interrupt"

    def test_same_seed_same_report(self, plugin: Any, catalog: Any) -> None:
        from vpmu_core.host import compose
        from vpmu_core.testing import toy

        def run() -> str:
            model = sorted(catalog.cpu_models)[0]
            host = compose(cpu=model, mode="reference", plugins=[(self.plugin_name, plugin), ("toy", toy)], seed=7)
            host.perf_event_open(PerfEventAttr(config="instructions", pinned=True), pid=-1, cpu=0)
            vm = host.create_vm(vcpus=1, pin=[0])
            vm.vcpus[0].execute(Work(instructions=3_000_000, branches=100_000))
            return json.dumps(host.report(), sort_keys=True, default=str)

        assert run() == run()


class ModeConformance(_Kit):
    """Checks every mode plugin passes, with every model of the named vendor plugins, for
    the default guest PMU and a subset of it."""

    mode_name: ClassVar[str] = ""
    mode_options: ClassVar[dict[str, Any]] = {}
    #: vendor plugins (entry point names) to combine with; models default to all of theirs
    vendor_plugins: ClassVar[tuple[str, ...]] = ("intel_arch", "amd_perfmon")
    #: (name, module) pairs used instead of `vendor_plugins` (vendors not installed)
    vendor_modules: ClassVar[tuple[tuple[str, Any], ...]] = ()
    models: ClassVar[tuple[str, ...] | None] = None
    #: background VM-exits per second of guest execution in the counting checks; every exit
    #: runs the hypervisor's host-mode work (instructions and cycles, no branches)
    exit_rate: ClassVar[int] = 100_000

    @pytest.fixture
    def plugins(self, plugin: Any) -> list[tuple[str, Any]]:
        out = [(self.plugin_name, plugin)]
        if self.vendor_modules:
            return out + list(self.vendor_modules)
        for v in self.vendor_plugins:
            out.append((v, load_plugin(v)))
        return out

    @pytest.fixture
    def catalog(self, plugins: list[tuple[str, Any]]) -> Any:
        return build_catalog(plugins, [])

    def _compose(self, plugins: list[tuple[str, Any]], cpu: str, seed: int = 0) -> Any:
        from vpmu_core.host import compose

        return compose(cpu=cpu, mode=self.mode_name, mode_options=self.mode_options, plugins=plugins, seed=seed)

    def _model_names(self, catalog: Any) -> list[str]:
        names = list(self.models or sorted(catalog.cpu_models))
        ok = []
        for n in names:
            try:
                catalog.modes[self.mode_name].factory(catalog.cpu_models[n].factory({}), dict(self.mode_options))
            except Exception:
                continue  # the mode refuses this model (a capability it requires): not a failure here
            ok.append(n)
        return ok

    @staticmethod
    def _guest_configs(host: Any) -> list[tuple[str, GuestPmuConfig]]:
        """The default guest PMU and a subset (3 GP counters, at most 1 fixed)."""
        caps = host.model.caps
        subset = GuestPmuConfig(
            gp_counters=min(3, caps.gp_counters),
            fixed_counters=min(1, caps.fixed_counters) if caps.fixed_counters else 0,
        )
        return [("default", GuestPmuConfig()), ("subset", subset)]

    def _cases(self, plugins: list[tuple[str, Any]], catalog: Any) -> list[tuple[str, str, GuestPmuConfig]]:
        out = []
        for cpu in self._model_names(catalog):
            for label, cfg in self._guest_configs(self._compose(plugins, cpu)):
                out.append((cpu, label, cfg))
        return out

    def _exits(self, rate: int | None = None) -> Any:
        from vpmu_core.engine.exits import ExitProfile

        return ExitProfile(rate_per_s=self.exit_rate if rate is None else rate, fastpath_share=0.5)

    def test_mode_is_registered(self, catalog: Any) -> None:
        assert self.mode_name in catalog.modes
        rec = catalog.plugin(self.plugin_name)
        assert rec is not None and rec.status == "loaded" and "vpmu_register_modes" in rec.hooks

    def test_composes_with_some_model(self, catalog: Any) -> None:
        assert self._model_names(catalog), "the mode accepts none of the vendor models"

    def test_unknown_msr_is_gp(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
            with pytest.raises(GuestFault) as e:
                v.wrmsr(UNKNOWN_MSR, 1)
            assert e.value.vector == 13
            with pytest.raises(GuestFault):
                v.rdmsr(UNKNOWN_MSR)

    def test_guest_perf_counts_match_truth_without_contention(
        self, plugins: list[tuple[str, Any]], catalog: Any
    ) -> None:
        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], exits=self._exits(50_000))
            gp = vm.guest_perf
            evs = {k: gp.perf_event_open(PerfEventAttr(config=k, pinned=True), cpu=0) for k in _COUNTED}
            v = vm.vcpus[0]
            v.execute(Work(instructions=20_000_000, branches=2_000_000))
            for ev in evs.values():
                _stop_and_check(gp.perf, ev, cpu)
            assert v.stats.total_exits > 100, "the exit process should interleave exits"
            assert evs["branches"].read().value == 2_000_000, cpu
            assert gp.perf.truth_of(evs["branches"]) == 2_000_000

    def test_guest_counts_exact_with_host_work_in_exits(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """Instructions, cycles and branches equal ground truth exactly at a high exit rate,
        every exit doing host-mode work the guest's counters must not see (kernel and user
        spans; default and subset guest PMU)."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits())
            gp = vm.guest_perf
            evs = {k: gp.perf_event_open(PerfEventAttr(config=k, pinned=True), cpu=0) for k in _COUNTED}
            v = vm.vcpus[0]
            v.execute(Work(instructions=6_000_000, cycles=9_000_000, branches=600_000, cpl=0))
            v.execute(Work(instructions=4_000_000, cycles=5_000_000, branches=300_000, cpl=3))
            assert v.stats.total_exits > 300, "the exit process should interleave many exits"
            assert sum(v.stats.overhead_cycles.values()) > 0, "exits should run host-mode work"
            for ev in evs.values():
                _stop_and_check(gp.perf, ev, f"{cpu} {label} guest PMU")
            assert evs["branches"].read().value == gp.perf.truth_of(evs["branches"]) == 900_000

    def test_first_read_never_shows_a_host_value(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """With a distinctive host count in the hardware, every guest counter read (RDMSR of
        each alias, RDPMC) before the guest's first write shows 0."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            _host_counts(host)
            v = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(0)).vcpus[0]
            for pmc in v.pmu.pmcs:
                for msr in v.pmu.counter_msrs(pmc):
                    got = v.rdmsr(msr)
                    assert got == 0, f"{cpu} {label}: guest counter MSR {msr:#x} reads {got:#x} before any write"
                got = v.rdpmc(v.pmu.rdpmc_ecx(pmc))
                assert got == 0, f"{cpu} {label}: guest RDPMC of counter {pmc.idx:#x} reads {got:#x}"

    def test_reads_never_return_a_host_count(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """The guest plants values in its (disabled) counters; the host counts distinctive
        work on the same CPU while the vCPU is scheduled out; the guest reads back exactly
        its own values, by RDMSR and RDPMC."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(0))
            v = vm.vcpus[0]
            planted = LeakChecker(host).plant(v, 0x2A5A_0000)
            task = _host_counts(host)
            v.queue(Work(instructions=2_000_000, branches=1_000))
            task.execute(Work(instructions=779_377, cycles=1_234_567, branches=31_337))
            host.advance(ns=20_000_000)
            for pmc in v.pmu.pmcs:
                msr = v.pmu.counter_msrs(pmc)[0]
                got = v.rdmsr(msr)
                assert got == planted[pmc.idx], (
                    f"{cpu} {label}: guest {msr:#x} reads {got:#x}, wrote {planted[pmc.idx]:#x}"
                )
                got = v.rdpmc(v.pmu.rdpmc_ecx(pmc))
                assert got == planted[pmc.idx], f"{cpu} {label}: guest RDPMC {pmc.idx:#x} reads {got:#x}"

    def test_no_leaks(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            checker = LeakChecker(host)
            host.perf_event_open(PerfEventAttr(config="cycles", exclude_guest=True), pid=-1, cpu=0)
            vm = host.create_vm(vcpus=1, pin=[0])
            ev = vm.guest_perf.perf_event_open(PerfEventAttr(config="instructions", pinned=True), cpu=0)
            v = vm.vcpus[0]
            checker.plant(v, 0x1B00_0000, skip={ev.idx})
            task = host.spawn_task("between", cpu=0)
            for _ in range(2):  # load, run, put (a host task takes the CPU), twice
                v.execute(Work(instructions=2_500_000))
                task.execute(Work(instructions=1_000_000))
                host.advance(ns=5_000_000)
            assert checker.checks >= 4, "the vCPU should have been loaded and put"
            assert host.leaks.leaks == [], host.leaks.leaks
            assert checker.leaks == [], checker.leaks

    def test_vcpu_rescheduled_counts_exact_and_nothing_leaks(
        self, plugins: list[tuple[str, Any]], catalog: Any
    ) -> None:
        """Two vCPUs (two VMs) and a host task time-share one CPU: every guest and host count
        is exact, and the core's own leak check (not the mode's) finds nothing at any put or
        load: no guest selector left counting host work, no guest value left in hardware,
        no other guest's value visible at entry."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            checker = LeakChecker(host)
            task = host.spawn_task("host-work", cpu=0)
            hev = host.perf_event_open(PerfEventAttr(config="instructions", exclude_guest=True), pid=task.pid)
            guests = []
            for n in range(2):
                vm = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(20_000))
                gp = vm.guest_perf
                evs = [gp.perf_event_open(PerfEventAttr(config=k, pinned=True), cpu=0) for k in _COUNTED]
                v = vm.vcpus[0]
                used = {e.idx for e in evs}
                checker.plant(v, 0x3C00_0000 + 0x0100_0000 * n, skip=used)
                guests.append((vm, v, evs))
            for n, (_, v, _) in enumerate(guests):
                v.queue(Work(instructions=9_000_000 + 1_000_000 * n, branches=700_000, cpl=0))
            task.execute(Work(instructions=12_000_000, branches=300_000))
            host.advance(ns=60_000_000)
            assert checker.checks > 8, "the vCPUs should have been put and loaded many times"
            assert checker.leaks == [], f"{cpu} {label}: {checker.leaks[:3]}"
            assert hev.read().value == host.perf.truth_of(hev), f"{cpu} {label}: host task count"
            for vm, v, evs in guests:
                for ev in evs:
                    _stop_and_check(vm.guest_perf.perf, ev, f"{cpu} {label} {v.name}")
                for idx, value in checker.planted[v.name].items():
                    msr = v.pmu.counter_msrs(v.pmu.pmc(idx))[0]
                    assert v.rdmsr(msr) == value, f"{cpu} {label} {v.name}: planted counter {idx:#x} changed"

    def test_guest_pmis_one_per_sample(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """A guest sampling event with period P over T events takes floor(T/P) samples (+-1)
        and every sample is one virtual PMI in `vcpu.pmis`."""
        period = 500_000
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(20_000))
            ev = vm.guest_perf.perf_event_open(PerfEventAttr(config="instructions", sample_period=period), cpu=0)
            v = vm.vcpus[0]
            v.execute(Work(instructions=10_000_000, branches=100_000))
            counted = vm.guest_perf.perf.truth_of(ev)
            assert abs(ev.samples - counted // period) <= 1, f"{cpu} {label}: {ev.samples} samples over {counted}"
            assert len(v.pmis) == ev.samples, f"{cpu} {label}: {len(v.pmis)} PMIs for {ev.samples} samples"

    def test_emulated_instructions_counted_exactly_once(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """Instructions the hypervisor emulates (CPUID always exits) retire once each: with
        no other guest work an instructions counter equals ground truth exactly."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(0))
            gp = vm.guest_perf
            ev = gp.perf_event_open(PerfEventAttr(config="instructions", pinned=True), cpu=0)
            v = vm.vcpus[0]
            t0 = gp.perf.truth_of(ev)
            for _ in range(50):
                v.cpuid(0, 0)
            assert gp.perf.truth_of(ev) - t0 == 50
            _stop_and_check(gp.perf, ev, f"{cpu} {label}")

    def test_migration_round_trip(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """A counting guest saved on one host and restored on another keeps its counter
        values and goes on counting exactly there."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            src = self._compose(plugins, cpu)
            v = src.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(20_000)).vcpus[0]
            driver = src.model.make_driver()
            hw = driver.hw_event(PerfEventAttr(config="branches"), v)
            idx = self._first_counter(v, hw.mask)
            msr = v.pmu.counter_msrs(v.pmu.pmc(idx))[0]
            driver.start(v, hw, idx, 0x1000)
            v.execute(Work(instructions=3_000_000, branches=250_000))
            state = json.loads(json.dumps(v.save_state()))
            before = _state_msr(state, msr)
            assert before == 0x1000 + 250_000, f"{cpu} {label}: source counted {before - 0x1000}"
            dst = self._compose(plugins, cpu, seed=1)
            w = dst.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(20_000)).vcpus[0]
            w.restore_state(state)
            w.execute(Work(instructions=2_000_000, branches=125_000))
            after = _state_msr(w.save_state(), msr)
            assert after == before + 125_000, f"{cpu} {label}: {after - before} branches counted after restore"

    def test_every_selector_alias_programs_its_counter(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """A guest may program a GP counter through any alias of its selector (the vendor's
        `eventsel_msrs`, e.g. AMD's K7 EVNTSELx beside PerfCtrExtCore's PERF_CTLx): the
        counter then counts exactly as through the canonical MSR. A mode that maps selector
        writes by `eventsel_msr` alone never programs the alias's write: it counts 0."""
        branches = 40_009
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            v = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(20_000)).vcpus[0]
            driver = host.model.make_driver()
            hw = driver.hw_event(PerfEventAttr(config="branches"), v)
            for pmc in v.pmu.gp:
                if not hw.mask >> pmc.idx & 1:
                    continue
                sels, ctr = v.pmu.eventsel_msrs(pmc), v.pmu.counter_msrs(pmc)[0]
                for msr in sels:
                    driver.start(v, hw, pmc.idx, 0)  # global enables as the driver sets them
                    sel = v.rdmsr(sels[0])
                    v.wrmsr(sels[0], 0)
                    v.wrmsr(ctr, 0)
                    v.wrmsr(msr, sel)
                    v.execute(Work(instructions=400_000, branches=branches))
                    v.wrmsr(msr, 0)
                    got = v.rdmsr(ctr)
                    driver.stop(v, hw, pmc.idx)
                    assert got == branches, (
                        f"{cpu} {label}: counter {pmc.idx} programmed through {msr:#x} counted {got}"
                    )

    @staticmethod
    def _first_counter(v: Any, mask: int) -> int:
        return next(i for i in range(64) if mask >> i & 1 and v.pmu.pmc(i) is not None)

    def test_guest_pmu_subset_is_enforced(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        """A subset guest PMU is what the guest gets: its driver enumerates exactly the
        guest's counters from CPUID (through the mode's exits) and every host counter beyond
        them #GPs."""
        for cpu, label, cfg in self._cases(plugins, catalog):
            host = self._compose(plugins, cpu)
            v = host.create_vm(vcpus=1, pin=[0], pmu=cfg, exits=self._exits(0)).vcpus[0]
            mask = host.model.make_driver().counter_mask(v)
            assert mask == v.pmu.all_counter_mask, (
                f"{cpu} {label}: guest CPUID {mask:#x}, PMU {v.pmu.all_counter_mask:#x}"
            )
            phys = host.cpus[0].pmu
            for pmc in phys.pmcs:
                if mask >> pmc.idx & 1:
                    continue
                for msr in phys.counter_msrs(pmc):
                    if v.pmu.has_msr(msr):
                        continue  # an alias the vendor keeps for the guest
                    if msr in KVM_COMMON_PMU_MSRS:
                        # KVM's common code answers the legacy PMU MSRs nobody claims:
                        # reads 0, writes dropped (kvm_get_msr_common / kvm_set_msr_common)
                        v.wrmsr(msr, 0x1234)
                        assert v.rdmsr(msr) == 0, f"{cpu} {label}: {msr:#x} beyond the guest's counters"
                        continue
                    with pytest.raises(GuestFault):
                        v.rdmsr(msr)
                    with pytest.raises(GuestFault):
                        v.wrmsr(msr, 0)

    def test_same_seed_same_report(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        cpu = self._model_names(catalog)[0]

        def run() -> str:
            host = self._compose(plugins, cpu, seed=11)
            vm = host.create_vm(vcpus=1, pin=[0])
            vm.guest_perf.perf_event_open(PerfEventAttr(config="instructions"), cpu=0)
            vm.vcpus[0].execute(Work(instructions=4_000_000, branches=400_000))
            return json.dumps(host.report(), sort_keys=True, default=str)

        assert run() == run()

    def test_guest_event_kinds_are_counted(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0])
            ev = vm.guest_perf.perf_event_open(PerfEventAttr(config="cycles", pinned=True), cpu=0)
            vm.vcpus[0].execute(Work(instructions=1_000_000, cycles=3_000_000))
            assert ev.hw.kind == EventKind.CYCLES
            assert vm.guest_perf.perf.truth_of(ev) >= 3_000_000
            _stop_and_check(vm.guest_perf.perf, ev, cpu)


#: the events the counting checks open (host-mode exit work has no branches, so a check of
#: branches alone would miss a counter that also counts the hypervisor)
_COUNTED = ("instructions", "cycles", "branches")


def _stop_and_check(perf: Any, ev: Any, where: str) -> None:
    """Disable `ev` and check its count against ground truth. Exact up to the disable's own
    instructions: the driver's stop sequence retires guest instructions that are in the
    truth window (it closes after the stop) while the counter may already be off, so the
    count lies between the truth before the disable and the truth after it."""
    before = perf.truth_of(ev)
    ev.disable()
    got, after = ev.read().value, perf.truth_of(ev)
    assert before <= got <= after, f"{where}: {ev.attr.label()} reads {got}, ground truth {before}..{after}"


def _host_counts(host: Any) -> Any:
    """Leave distinctive host counts in the hardware of CPU 0: host perf events (left
    open, exclude_guest) and a host task that ran 779,377 instructions."""
    for k in _COUNTED:
        host.perf_event_open(PerfEventAttr(config=k, exclude_guest=True), pid=-1, cpu=0)
    task = host.spawn_task("host-counts", cpu=0)
    task.execute(Work(instructions=779_377, cycles=1_234_567, branches=31_337))
    host.advance(ns=1_000_000)
    return task


def _reads(pmu: Any, msr: int) -> int | None:
    try:
        return int(pmu.rdmsr(msr))
    except GuestFault:
        return None


def _state_msr(state: dict[str, Any], msr: int) -> int:
    """A PMU register of a `save_state()` (docs/migration-state.md: lower-case hex keys)."""
    return int(state["pmu"][f"{msr:#x}"])
