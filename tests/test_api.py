"""The plugin API (`vpmu_core.api`): what it exports, PmuBase's mandatory methods, and guest
kernel errors from guest perf."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

import vpmu_core.api as api
from vpmu_core.testing import toy

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_exists() -> None:
    missing = [n for n in api.__all__ if not hasattr(api, n)]
    assert not missing
    assert api.EMULATED_INSTRUCTION[api.EventKind.CYCLES] == 0
    assert api.EMULATED_INSTRUCTION[api.EventKind.INSTRUCTIONS] == 1
    assert api.ONE_INSTRUCTION[api.EventKind.CYCLES] == 1


@pytest.mark.parametrize("method", ["_decode", "rdpmc", "eventsel_msr", "counter_msrs", "control_msrs", "rdpmc_ecx"])
def test_a_vendor_missing_a_mandatory_method_fails_at_construction(method: str) -> None:
    body = {k: v for k, v in vars(toy.ToyPmu).items() if k != method}
    ns = {"__abstractmethods__": frozenset()}  # rebuilt by ABCMeta
    ns.update(body)
    del ns["__abstractmethods__"]
    incomplete = type("Incomplete", (api.PmuBase,), ns)
    with pytest.raises(TypeError, match=method):
        incomplete(4, 1)
    toy.ToyPmu(4, 1)  # the complete one constructs


def test_optional_methods_have_defaults() -> None:
    pmu = toy.ToyPmu(4, 1)
    assert api.PmuBase.hw_eventsel(pmu, 0x1234) == 0x1234
    assert api.PmuBase.global_msrs(pmu) == {}
    assert api.PmuBase.fixed_ctrl_msr(pmu) is None


def test_shared_overflow_status_default() -> None:
    """PmuBase's one raise_overflow/global_status/set_global_status: the status register's
    bit per overflow, the PMI only with INT, host writes masked to the register's bits;
    a PMU without a status register (Intel v1, AMD before PerfMonV2) keeps none."""
    pmu = toy.ToyPmu(4, 1)
    assert "raise_overflow" not in vars(toy.ToyPmu) and "global_status" not in vars(toy.ToyPmu)
    pmc = pmu.gp[2]
    pmc.int_en = False
    assert pmu.raise_overflow(pmc) is False and pmu.global_status == 1 << 2
    pmc.int_en = True
    assert pmu.raise_overflow(pmc) is True
    pmu.set_global_status((1 << 63) | 1)
    assert pmu.global_status == 1 and pmu.global_status == pmu.gstatus.value
    pmu.status_register = None
    pmu.set_global_status(1)
    assert pmu.raise_overflow(pmc) is True and pmu.global_status == 0


def _plugin_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpmu_core"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("vpmu_core")]
    return out


def test_shipped_plugins_import_only_from_the_api() -> None:
    bad = {}
    for path in sorted(ROOT.glob("plugins/*/vpmu_*/*.py")):
        mods = sorted({m for m in _plugin_imports(path) if m != "vpmu_core.api"})
        if mods:
            bad[str(path.relative_to(ROOT))] = mods
    assert not bad, bad


def test_the_example_plugin_imports_only_from_the_api() -> None:
    paths = sorted(ROOT.glob("examples/*/vpmu_*/*.py"))
    assert paths
    for path in paths:
        assert set(_plugin_imports(path)) <= {"vpmu_core.api"}, path


class _FaultingDriver(toy.ToyDriver):
    """A guest driver that programs an MSR the guest does not have."""

    def start(self, port: api.RegisterPort, hw: api.HwEvent, idx: int, value: int) -> None:
        port.wrmsr(0x0BAD_C0DE, 1)
        super().start(port, hw, idx, value)


class _Model(toy.ToyModel):
    driver_class = _FaultingDriver


class _Plugin:
    @api.hookimpl
    def vpmu_register_cpu_models(self, register: object) -> None:
        register(api.CpuModelSpec(name="toy/faulting", vendor="toy", factory=_Model))  # type: ignore[operator]

    @api.hookimpl
    def vpmu_register_modes(self, register: object) -> None:
        register(api.ModeSpec(name="reference", factory=toy.ReferenceMode))  # type: ignore[operator]


def test_a_guest_gp_in_guest_perf_is_a_guest_kernel_error() -> None:
    """guest_perf.perf_event_open on a guest whose driver touches a missing MSR fails with
    an errno (as the syscall would) and leaves a report entry, not a raw GuestFault; the
    guest goes on running."""
    from vpmu_core import Work, compose

    host = compose(cpu="toy/faulting", mode="reference", plugins=[("faulting", _Plugin())])
    vm = host.create_vm(vcpus=1, pin=[0])
    with pytest.raises(api.PerfError) as e:
        vm.guest_perf.perf_event_open(api.PerfEventAttr(config="instructions"), cpu=0)
    assert e.value.errno == errno.EIO
    assert vm.guest_perf.perf.events == []
    vm.vcpus[0].execute(Work(instructions=1_000))
    (entry,) = host.report()["guest_kernel_errors"]
    assert entry["vm"] == vm.name and entry["call"] == "perf_event_open" and entry["errno"] == "EIO"
    assert "0xbadc0de" in entry["fault"]


def test_reports_without_guest_errors_have_no_such_section() -> None:
    from vpmu_core import Work, compose

    host = compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)])
    vm = host.create_vm(vcpus=1, pin=[0])
    vm.guest_perf.perf_event_open(api.PerfEventAttr(config="instructions"), cpu=0)
    vm.vcpus[0].execute(Work(instructions=1_000))
    assert "guest_kernel_errors" not in host.report()
