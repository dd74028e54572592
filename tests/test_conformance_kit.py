"""The conformance kit run on the toy fixtures: the kit itself must pass a minimal plugin,
and a plugin broken on purpose must fail the named checks."""

from __future__ import annotations

import textwrap

from vpmu_core.testing import toy
from vpmu_core.testing.conformance import ModeConformance, VendorConformance

NOT_INSTALLED = {
    "test_plugin_is_discoverable": "toy is a fixture module, not an installed entry point",
    "test_plugin_listed_with_version": "toy is a fixture module, not an installed entry point",
}


class TestToyVendor(VendorConformance):
    plugin_name = "toy"
    plugin_module = toy
    expected_failures = NOT_INSTALLED
    legacy_counter_writes = "sign_extend"
    guest_capability_bits = {toy.CAPS: toy.CAP_FULL_WIDTH}


class TestReferenceMode(ModeConformance):
    plugin_name = "toy"
    plugin_module = toy
    mode_name = "reference"
    vendor_modules = ()
    models = ("toy/basic",)


def test_kit_catches_a_broken_vendor(pytester):
    pytester.makepyfile(
        textwrap.dedent(
            """
            import vpmu_core.testing.toy as toy
            from vpmu_core.testing.conformance import VendorConformance

            class Leaky(toy.ToyPmu):
                def _w_evtsel(self, i, v):      # accepts reserved bits: a conformance bug
                    self.evtsel[i] = v & toy.EVTSEL_VALID
                    self.refresh(1 << i)

            class Model(toy.ToyModel):
                def make_pmu(self, guest=None):
                    return Leaky(self.gp_n, 1, guest=guest is not None) if guest is None else Leaky(
                        guest.gp_counters, guest.fixed_counters, guest=True)

            class Plugin:
                from vpmu_core.markers import hookimpl
                from vpmu_core.plugins.records import CpuModelSpec

                @hookimpl
                def vpmu_register_cpu_models(self, register):
                    register(self.CpuModelSpec(name="toy/leaky", vendor="toy", factory=Model))

            class TestLeaky(VendorConformance):
                plugin_name = "leaky"
                plugin_module = Plugin()
            """
        )
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 3
    result.stdout.fnmatch_lines(["*test_reserved_selector_bits_follow_policy*"])


def test_testing_package_imports_without_pytest() -> None:
    """`toy`, `PhysicalPort`, `StubCpu` and `LeakChecker` are usable outside pytest; only the
    conformance classes need it (they load as the pytest11 plugin)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from vpmu_core.testing import LeakChecker, PhysicalPort, StubCpu, toy\n"
        "import vpmu_core.testing.ports\n"
        "m = toy.ToyModel({}); p = m.make_pmu(None)\n"
        "assert PhysicalPort(m, p).cpuid(toy.TOY_CPUID_LEAF)[0] == 4\n"
        "assert StubCpu(0, None).now_ns() == 0 and LeakChecker\n"
        "try:\n"
        "    import vpmu_core.testing.conformance\n"
        "except ImportError:\n"
        "    print('conformance needs pytest')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "conformance needs pytest"
