"""Mutation testing of the conformance kit: every kit check fails on a copy of the toy vendor
or reference mode with one planted bug, and passes on the correct toy.

A check no planted bug fails is not a check. The table maps each kit check (by its stable
name) to the bug that must make it fail; the planted bugs are the ones a third party's
first vendor and mode really had (issue 12). All mutants and their correct twins run in
one pytester session, then the table is checked node by node.
"""

from __future__ import annotations

import textwrap

import pytest

from vpmu_core.testing.conformance import ModeConformance, VendorConformance

PRELUDE = '''
import random

import vpmu_core.testing.toy as toy
from vpmu_core.errors import gp
from vpmu_core.events import EventKind
from vpmu_core.hw.pmc import FIXED_BASE
from vpmu_core.hw.msr import Register
from vpmu_core.markers import hookimpl
from vpmu_core.plugins.records import CpuModelSpec, ModeSpec
from vpmu_core.testing.conformance import UNKNOWN_MSR, ModeConformance, VendorConformance


class Plugin:
    """The toy vendor and reference mode as one plugin object, with replaceable parts."""

    def __init__(self, model=toy.ToyModel, mode=toy.ReferenceMode, model_name="toy/basic", mode_name="reference"):
        self.model, self.mode, self.model_name, self.mode_name = model, mode, model_name, mode_name

    @hookimpl
    def vpmu_register_cpu_models(self, register):
        register(CpuModelSpec(name=self.model_name, vendor="toy", factory=self.model))

    @hookimpl
    def vpmu_register_modes(self, register):
        register(ModeSpec(name=self.mode_name, factory=self.mode))


def with_pmu(cls):
    return type("Model", (toy.ToyModel,), {"pmu_class": cls})


def with_driver(cls):
    return type("Model", (toy.ToyModel,), {"driver_class": cls})


class VendorKit(VendorConformance):
    plugin_name = "toy"
    legacy_counter_writes = "sign_extend"
    guest_capability_bits = {toy.CAPS: toy.CAP_FULL_WIDTH}


class ModeKit(ModeConformance):
    plugin_name = "toy"
    mode_name = "reference"
    vendor_modules = ()
    models = ("toy/basic",)


class TestCorrectVendor(VendorKit):
    plugin_module = Plugin()


class TestCorrectMode(ModeKit):
    plugin_module = Plugin()


class TestInstalledVendor(VendorConformance):
    """The packaging checks need a plugin that is installed through its entry point."""

    plugin_name = "intel_arch"
'''

# ---- vendor mutants (copies of the toy vendor with one planted bug) ---------------------------
VENDOR_MUTANTS: dict[str, str] = {
    "not_installed": """
        # not installed: no entry point, no distribution version
        class Mutant(VendorKit):
            plugin_name = "toy-not-installed"
            plugin_module = Plugin()
        """,
    "foreign_marker": """
        # a hookimpl marker of another project: registers zero vpmu hooks (pitfall P2)
        import pluggy
        foreign = pluggy.HookimplMarker("Vpmu")
        class NoHooks:
            @foreign
            def vpmu_register_cpu_models(self, register):
                register(CpuModelSpec(name="toy/basic", vendor="toy", factory=toy.ToyModel))
        class Mutant(VendorKit):
            plugin_module = NoHooks()
        """,
    "upper_case_name": """
        class Mutant(VendorKit):
            plugin_module = Plugin(model_name="Toy/Basic")
        """,
    "cpuid_off_by_one": """
        # CPUID enumerates one GP counter fewer than the PMU has
        class M(toy.ToyModel):
            def cpuid_table(self, guest=None):
                t = super().cpuid_table(guest)
                a, b, c, d = t.get(toy.TOY_CPUID_LEAF, 0)
                t.set(toy.TOY_CPUID_LEAF, (a - 1, b, c, d))
                return t
        class Mutant(VendorKit):
            plugin_module = Plugin(model=M)
        """,
    "guest_cpuid_ignores_config": """
        # the guest CPUID leaf always shows the host's counters, whatever the guest config
        class M(toy.ToyModel):
            def cpuid_table(self, guest=None):
                return super().cpuid_table(None)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=M)
        """,
    "guest_config_not_clamped": """
        class M(toy.ToyModel):
            def resolve_guest(self, requested):
                g = super().resolve_guest(requested)
                return g.model_copy(update={"gp_counters": requested.gp_counters or g.gp_counters,
                                            "version": requested.version or g.version})
        class Mutant(VendorKit):
            plugin_module = Plugin(model=M)
        """,
    "unknown_msr_reads_zero": """
        class P(toy.ToyPmu):
            def rdmsr(self, msr):
                return super().rdmsr(msr) if self.has_msr(msr) else 0
            def wrmsr(self, msr, value):
                if self.has_msr(msr):
                    super().wrmsr(msr, value)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "reserved_bits_masked": """
        # reserved selector bits silently masked instead of #GP
        class P(toy.ToyPmu):
            def _w_evtsel(self, i, v):
                self.evtsel[i] = v & toy.EVTSEL_VALID
                self.refresh(1 << i)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "anythread_accepted_in_guest": """
        # the guest selector accepts (and keeps) bit 21, reserved on the host (Intel AnyThread)
        class P(toy.ToyPmu):
            def _w_evtsel(self, i, v):
                if self.guest and v & (1 << 21):
                    self.evtsel[i] = v
                    return self.refresh(1 << i)
                super()._w_evtsel(i, v)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "one_reserved_bit_dropped": """
        # bit 21 alone is silently dropped (all-ones still #GPs on the other reserved bits)
        class P(toy.ToyPmu):
            def _w_evtsel(self, i, v):
                super()._w_evtsel(i, v & ~(1 << 21) if v & ~toy.EVTSEL_VALID == 1 << 21 else v)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "global_status_writable": """
        class P(toy.ToyPmu):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.gstatus.read_only = False
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "legacy_write_not_sign_extended": """
        # the legacy alias takes the value as it is (registered "masked", not "legacy")
        class P(toy.ToyPmu):
            def add_counter(self, msrs, pmc, write="masked"):
                super().add_counter(msrs, pmc, "masked")
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "selector_alias_undeclared": """
        # the toy's LEGACY_EVTSEL alias exists but eventsel_msrs() names only the canonical one
        class P(toy.ToyPmu):
            def eventsel_msrs(self, pmc):
                return () if pmc.is_fixed else (toy.EVTSEL + pmc.idx,)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "guest_caps_show_host_bits": """
        # the guest's capability MSR shows the host's value
        class P(toy.ToyPmu):
            def _caps(self):
                return toy.CAP_FULL_WIDTH | toy.CAP_HOST_ONLY
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "counters_beyond_guest_count_exist": """
        # a 1-counter guest still answers the second counter's MSRs
        class P(toy.ToyPmu):
            def __init__(self, gp_n=4, fixed_n=1, guest=False):
                super().__init__(gp_n, fixed_n, guest)
                for i in range(gp_n, 4):
                    self._reg(toy.CTR + i, lambda: 0, lambda v: None)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "driver_ignores_exclude_user": """
        class D(toy.ToyDriver):
            def hw_event(self, attr, port):
                hw = super().hw_event(attr.model_copy(update={"exclude_user": False}), port)
                return hw
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_driver(D))
        """,
    "counter3_counts_cycles": """
        # GP counter 3 counts cycles whatever its selector says
        class P(toy.ToyPmu):
            def _decode(self):
                super()._decode()
                if len(self.gp) > 3 and self.gp[3].event is not None:
                    self.gp[3].event = EventKind.CYCLES
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "rdpmc_fixed_reads_gp0": """
        class P(toy.ToyPmu):
            def rdpmc(self, ecx):
                return super().rdpmc(ecx & ~(1 << 30))
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_pmu(P))
        """,
    "exclude_guest_ignored": """
        # the VM-entry load keeps host-only (exclude_guest) events counting in the guest
        class D(toy.ToyDriver):
            def _set_global(self, port, idx, on, hw):
                super()._set_global(port, idx, on, hw.__class__(**{**hw.__dict__, "exclude_guest": False}))
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_driver(D))
        """,
    "driver_no_overflow_interrupt": """
        class D(toy.ToyDriver):
            def start(self, port, hw, idx, value):
                super().start(port, hw.__class__(**{**hw.__dict__, "config": hw.config & ~toy.INT}), idx, value)
        class Mutant(VendorKit):
            plugin_module = Plugin(model=with_driver(D))
        """,
    "nondeterministic_model": """
        class M(toy.ToyModel):
            def __init__(self, options):
                super().__init__(options)
                self.freq_hz = 3_000_000_000 + random.randrange(1, 10_000) * 1000
        class Mutant(VendorKit):
            plugin_module = Plugin(model=M)
        """,
}

# ---- mode mutants (copies of the reference mode with one planted bug) ------------------------
MODE_MUTANTS: dict[str, str] = {
    "mode_registered_under_other_name": """
        class Mutant(ModeKit):
            plugin_module = Plugin(mode_name="reference-v2")
        """,
    "mode_refuses_every_model": """
        from vpmu_core.errors import ConfigError
        class Mode(toy.ReferenceMode):
            def __init__(self, model, options):
                raise ConfigError("cpu", "needs a capability nobody has")
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "mode_answers_unknown_msrs": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_create(self, vcpu):
                super().vpmu_vcpu_create(vcpu)
                vcpu.pmu._reg(UNKNOWN_MSR, lambda: 0, lambda v: None)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "guest_counts_nothing": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_create(self, vcpu):
                vcpu.direct_count = False
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "guest_counts_host_exit_work": """
        # the guest's counters also count the hypervisor's host-mode work of each exit
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vm_entry(self, vcpu):
                total = sum(vcpu.stats.overhead_cycles.values())
                seen = getattr(vcpu, "_seen", 0)
                vcpu._seen = total
                c = total - seen
                if c > 0:
                    counts = (c, c * vcpu.costs.exit_host_ipc_x100 // 100, c) + (0,) * (len(EventKind) - 3)
                    vcpu.pmu.accrue(counts, 0, True)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "guest_cycles_count_exit_cycles": """
        # only the cycles counter sees the exits' host cycles
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vm_entry(self, vcpu):
                counts = (500,) + (0,) * (len(EventKind) - 1)
                vcpu.pmu.accrue(counts, 0, True)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "guest_read_returns_host_counter": """
        # a guest read of a counter returns the physical counter's (host) value
        def hw_value(vcpu, msr):
            for p in vcpu.pmu.pmcs:
                if msr in vcpu.pmu.counter_msrs(p):
                    return vcpu.cpu.pmu.read_counter(vcpu.cpu.pmu.pmc(p.idx))
            return None
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_guest_rdmsr(self, vcpu, msr):
                return hw_value(vcpu, msr)
            @hookimpl
            def vpmu_guest_rdpmc(self, vcpu, ecx):
                idx = FIXED_BASE + (ecx & 0xFFFF) if ecx & (1 << 30) else ecx & 0xFFFF
                return vcpu.cpu.pmu.read_counter(vcpu.cpu.pmu.pmc(idx))
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "load_pulls_hardware_values": """
        # at every sched-in the mode refreshes the guest's counters from the hardware
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_load(self, vcpu, cpu):
                for p in vcpu.pmu.pmcs:
                    h = cpu.pmu.pmc(p.idx)
                    if h is not None and h.value:
                        vcpu.pmu.write_counter(p, h.value)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "mode_reports_a_leak": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vm_exit(self, vcpu, reason, fastpath):
                vcpu.host.leaks.check(False, vcpu.name, "the mode's own check fired", 0)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "guest_values_left_in_hardware": """
        # the guest's counters and selectors are loaded into the hardware at sched-in and
        # left there at sched-out (the mode's own leak check is never called)
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_load(self, vcpu, cpu):
                hw = cpu.pmu
                for p in vcpu.pmu.pmcs:
                    h = hw.pmc(p.idx)
                    if h is None:
                        continue
                    hw.write_counter(h, vcpu.pmu.read_counter(p))
                    sel = vcpu.pmu.eventsel_msr(p)
                    if sel is not None:
                        hw.wrmsr(sel, vcpu.pmu.rdmsr(sel))
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "dropped_pmis": """
        # every other PMI request is lost
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_create(self, vcpu):
                super().vpmu_vcpu_create(vcpu)
                request, n = vcpu.request_pmi, [0]
                def lossy():
                    n[0] += 1
                    if n[0] % 2:
                        request()
                vcpu.request_pmi = lossy
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "emulated_instruction_counted_twice": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_instruction_retired(self, vcpu):
                super().vpmu_instruction_retired(vcpu)
                super().vpmu_instruction_retired(vcpu)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "selector_alias_not_programmed": """
        # the mode maps selector writes by eventsel_msr() alone: a write through an alias
        # is not a selector write to it, and it never reaches the counter's selector
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_guest_wrmsr(self, vcpu, msr, value):
                canonical = {vcpu.pmu.eventsel_msr(p) for p in vcpu.pmu.gp}
                others = set(vcpu.pmu.control_msrs()) - canonical - {vcpu.pmu.fixed_ctrl_msr()}
                return True if msr in others else None
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "restore_forgets_counts": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_restore_state(self, vcpu, state):
                for p in vcpu.pmu.pmcs:
                    vcpu.pmu.write_counter(p, 0)
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "subset_guest_gets_full_pmu": """
        # the mode gives every guest the default PMU, ignoring a smaller guest config
        from vpmu_core.hv.config import GuestPmuConfig
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_vcpu_create(self, vcpu):
                super().vpmu_vcpu_create(vcpu)
                vcpu.pmu = self.model.make_pmu(self.model.resolve_guest(GuestPmuConfig()))
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
    "nondeterministic_report": """
        class Mode(toy.ReferenceMode):
            @hookimpl
            def vpmu_mode_report(self, host):
                return {"nonce": random.random()}
        class Mutant(ModeKit):
            plugin_module = Plugin(mode=Mode)
        """,
}

#: kit check -> (mutant that must fail it, the class it must pass on)
TABLE: dict[str, dict[str, tuple[str, str]]] = {
    "vendor": {
        "test_plugin_is_discoverable": ("not_installed", "TestInstalledVendor"),
        "test_plugin_listed_with_version": ("not_installed", "TestInstalledVendor"),
        "test_plugin_implements_a_hook": ("foreign_marker", "TestCorrectVendor"),
        "test_names_are_lower_case_and_unique": ("upper_case_name", "TestCorrectVendor"),
        "test_cpuid_matches_pmu_layout": ("cpuid_off_by_one", "TestCorrectVendor"),
        "test_guest_cpuid_matches_non_default_configs": ("guest_cpuid_ignores_config", "TestCorrectVendor"),
        "test_guest_config_is_clamped_to_host": ("guest_config_not_clamped", "TestCorrectVendor"),
        "test_unknown_msr_is_gp": ("unknown_msr_reads_zero", "TestCorrectVendor"),
        "test_reserved_selector_bits_follow_policy": ("reserved_bits_masked", "TestCorrectVendor"),
        "test_reserved_bits_tried_one_at_a_time": ("anythread_accepted_in_guest", "TestCorrectVendor"),
        "test_read_only_registers_stay_read_only": ("global_status_writable", "TestCorrectVendor"),
        "test_legacy_counter_writes_sign_extend": ("legacy_write_not_sign_extended", "TestCorrectVendor"),
        "test_guest_capability_msrs_hide_host_only_bits": ("guest_caps_show_host_bits", "TestCorrectVendor"),
        "test_counters_beyond_the_guest_count_are_gp": ("counters_beyond_guest_count_exist", "TestCorrectVendor"),
        "test_selector_aliases_are_declared": ("selector_alias_undeclared", "TestCorrectVendor"),
        "test_driver_counts_exactly": ("driver_ignores_exclude_user", "TestCorrectVendor"),
        "test_every_counter_counts_its_event_exactly": ("counter3_counts_cycles", "TestCorrectVendor"),
        "test_rdpmc_reads_every_counter": ("rdpmc_fixed_reads_gp0", "TestCorrectVendor"),
        "test_exclude_guest_and_exclude_host_are_honoured": ("exclude_guest_ignored", "TestCorrectVendor"),
        "test_driver_overflow_raises_pmi": ("driver_no_overflow_interrupt", "TestCorrectVendor"),
        "test_same_seed_same_report": ("nondeterministic_model", "TestCorrectVendor"),
    },
    "mode": {
        "test_mode_is_registered": ("mode_registered_under_other_name", "TestCorrectMode"),
        "test_composes_with_some_model": ("mode_refuses_every_model", "TestCorrectMode"),
        "test_unknown_msr_is_gp": ("mode_answers_unknown_msrs", "TestCorrectMode"),
        "test_guest_perf_counts_match_truth_without_contention": ("guest_counts_nothing", "TestCorrectMode"),
        "test_guest_counts_exact_with_host_work_in_exits": ("guest_counts_host_exit_work", "TestCorrectMode"),
        "test_first_read_never_shows_a_host_value": ("guest_read_returns_host_counter", "TestCorrectMode"),
        "test_reads_never_return_a_host_count": ("load_pulls_hardware_values", "TestCorrectMode"),
        "test_no_leaks": ("mode_reports_a_leak", "TestCorrectMode"),
        "test_vcpu_rescheduled_counts_exact_and_nothing_leaks": ("guest_values_left_in_hardware", "TestCorrectMode"),
        "test_guest_pmis_one_per_sample": ("dropped_pmis", "TestCorrectMode"),
        "test_emulated_instructions_counted_exactly_once": ("emulated_instruction_counted_twice", "TestCorrectMode"),
        "test_migration_round_trip": ("restore_forgets_counts", "TestCorrectMode"),
        "test_every_selector_alias_programs_its_counter": ("selector_alias_not_programmed", "TestCorrectMode"),
        "test_guest_pmu_subset_is_enforced": ("subset_guest_gets_full_pmu", "TestCorrectMode"),
        "test_same_seed_same_report": ("nondeterministic_report", "TestCorrectMode"),
        "test_guest_event_kinds_are_counted": ("guest_cycles_count_exit_cycles", "TestCorrectMode"),
    },
}

#: further mutants, each with the check that must catch it (the issue's list of real bugs)
EXTRA: list[tuple[str, str, str]] = [
    ("vendor", "one_reserved_bit_dropped", "test_reserved_bits_tried_one_at_a_time"),
    ("mode", "guest_counts_host_exit_work", "test_vcpu_rescheduled_counts_exact_and_nothing_leaks"),
    ("mode", "guest_values_left_in_hardware", "test_no_leaks"),
    ("mode", "guest_read_returns_host_counter", "test_reads_never_return_a_host_count"),
]


def _kit_checks(cls: type) -> set[str]:
    return {n for n in dir(cls) if n.startswith("test_") and callable(getattr(cls, n))}


def _mutant_source(kind: str, name: str) -> str:
    code = (VENDOR_MUTANTS if kind == "vendor" else MODE_MUTANTS)[name]
    body = textwrap.dedent(code).replace("class Mutant(", f"class TestMutant_{kind}_{name}(")
    return f"\n# ---- {kind} mutant {name}\n" + body


def test_every_kit_check_has_a_mutant() -> None:
    """The table covers every check the kit has, and names only real checks and mutants."""
    assert set(TABLE["vendor"]) == _kit_checks(VendorConformance)
    assert set(TABLE["mode"]) == _kit_checks(ModeConformance)
    for kind, rows in TABLE.items():
        mutants = VENDOR_MUTANTS if kind == "vendor" else MODE_MUTANTS
        for mutant, _ in rows.values():
            assert mutant in mutants
    used = {(k, m) for k, rows in TABLE.items() for m, _ in rows.values()} | {(k, m) for k, m, _ in EXTRA}
    assert used == {("vendor", m) for m in VENDOR_MUTANTS} | {("mode", m) for m in MODE_MUTANTS}


def test_each_check_fails_on_its_mutant_and_passes_on_the_correct_toy(pytester: pytest.Pytester) -> None:
    kinds = ("vendor", "mode")
    src = PRELUDE + "".join(
        _mutant_source(k, m) for k in kinds for m in (VENDOR_MUTANTS if k == "vendor" else MODE_MUTANTS)
    )
    path = pytester.makepyfile(test_mutants=src)
    want: dict[str, str] = {}
    for kind, rows in TABLE.items():
        for check, (mutant, correct) in rows.items():
            want[f"{path.name}::TestMutant_{kind}_{mutant}::{check}"] = "failed"
            want[f"{path.name}::{correct}::{check}"] = "passed"
    for kind, mutant, check in EXTRA:
        want[f"{path.name}::TestMutant_{kind}_{mutant}::{check}"] = "failed"
    rec = pytester.inline_run(*sorted(want), "-p", "no:cacheprovider", "-q")
    got: dict[str, str] = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or rep.outcome != "passed":
            got[rep.nodeid] = "failed" if rep.outcome == "failed" else rep.outcome
    wrong = {n: (w, got.get(n, "not run")) for n, w in want.items() if got.get(n) != w}
    assert not wrong, "\n".join(f"{n}: expected {w}, got {g}" for n, (w, g) in sorted(wrong.items()))
