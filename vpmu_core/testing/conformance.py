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

from vpmu_core.errors import GuestFault
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.plugins.markers import ENTRY_POINT_GROUP

UNKNOWN_MSR = 0x0BAD_C0DE


def load_plugin(name: str) -> Any:
    """Load a plugin module through its installed entry point."""
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        pytest.fail(f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r}: is the plugin installed?")
    return eps[0].load()


class PhysicalPort:
    """A PMU as a driver port, for checks without an engine (CPUID from `table`, by default
    the host's)."""

    def __init__(self, model: Any, pmu: Any, table: Any = None) -> None:
        self.model, self.pmu = model, pmu
        self.table = model.cpuid_table(None) if table is None else table

    def rdmsr(self, msr: int) -> int:
        return self.pmu.rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        self.pmu.wrmsr(msr, value)

    def rdpmc(self, ecx: int) -> int:
        return self.pmu.rdpmc(ecx)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.table.get(leaf, subleaf)

    def set_entry_loads(self, loads: dict[int, int]) -> None:
        self.pmu.set_entry_loads(loads)


class StubCpu:
    """The `PerfCpu` a `PerfSubsystem` needs, without an engine: an index, a port, no task
    and a clock the test sets (`ns`)."""

    def __init__(self, index: int, port: Any) -> None:
        self.index = index
        self.port = port
        self.current_task: Any = None
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


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

    @pytest.fixture
    def catalog(self, plugin: Any) -> Any:
        return build_catalog([(self.plugin_name, plugin)], [])

    def _models(self, catalog: Any) -> list[Any]:
        names = self.models or tuple(sorted(catalog.cpu_models))
        return [catalog.cpu_models[n].factory({}) for n in names]

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
        for model in self._models(catalog):
            pmu = model.make_pmu(None)
            assert len(pmu.gp) == model.caps.gp_counters, model.name
            assert len(pmu.fixed) == model.caps.fixed_counters, model.name
            guest = model.resolve_guest(GuestPmuConfig())
            gpmu = model.make_pmu(guest)
            assert len(gpmu.gp) == guest.gp_counters, model.name
            assert len(gpmu.fixed) == (guest.fixed_counters or 0), model.name
            driver = model.make_driver()
            port = PhysicalPort(model, pmu)
            mask = driver.counter_mask(port)
            assert mask == pmu.all_counter_mask, (
                f"{model.name}: driver sees {mask:#x}, PMU has {pmu.all_counter_mask:#x}"
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

    def test_counters_beyond_the_guest_count_are_gp(self, catalog: Any) -> None:
        for model in self._models(catalog):
            if model.caps.gp_counters < 2:
                continue
            host = model.make_pmu(None)
            small = model.make_pmu(model.resolve_guest(GuestPmuConfig(gp_counters=1)))
            for msr in host.counter_msrs(host.gp[1]):
                if small.has_msr(msr):
                    continue  # an alias the vendor keeps (documented by the vendor)
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
        from vpmu_core.plugins.compose import compose
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
    """Checks every mode plugin passes, with every model of the named vendor plugins."""

    mode_name: ClassVar[str] = ""
    mode_options: ClassVar[dict[str, Any]] = {}
    #: vendor plugins (entry point names) to combine with; models default to all of theirs
    vendor_plugins: ClassVar[tuple[str, ...]] = ("intel_arch", "amd_perfmon")
    #: (name, module) pairs used instead of `vendor_plugins` (vendors not installed)
    vendor_modules: ClassVar[tuple[tuple[str, Any], ...]] = ()
    models: ClassVar[tuple[str, ...] | None] = None

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
        from vpmu_core.plugins.compose import compose

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
        from vpmu_core.engine.exits import ExitProfile

        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            vm = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=50_000, fastpath_share=0.5))
            gp = vm.guest_perf
            ev_b = gp.perf_event_open(PerfEventAttr(config="branches", pinned=True), cpu=0)
            v = vm.vcpus[0]
            v.execute(Work(instructions=20_000_000, branches=2_000_000))
            ev_b.disable()
            assert v.stats.total_exits > 100, "the exit process should interleave exits"
            assert ev_b.read().value == 2_000_000, cpu
            assert gp.perf.truth_of(ev_b) == 2_000_000

    def test_no_leaks(self, plugins: list[tuple[str, Any]], catalog: Any) -> None:
        for cpu in self._model_names(catalog):
            host = self._compose(plugins, cpu)
            host.perf_event_open(PerfEventAttr(config="cycles", exclude_guest=True), pid=-1, cpu=0)
            vm = host.create_vm(vcpus=1, pin=[0])
            vm.guest_perf.perf_event_open(PerfEventAttr(config="instructions", pinned=True), cpu=0)
            vm.vcpus[0].execute(Work(instructions=5_000_000))
            assert host.leaks.leaks == [], host.leaks.leaks

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
            assert ev.read().value >= 3_000_000, cpu
