"""End to end on the core engine in the reference mode: the DESIGN §5 counting window."""

from __future__ import annotations

import pytest
import vpmu_intel_arch
from vpmu_intel_arch.events import EVTSEL_EN, EVTSEL_OS, EVTSEL_USR
from vpmu_intel_arch.pmu import MSR_FIXED_CTR0, MSR_FIXED_CTR_CTRL, MSR_GLOBAL_CTRL, MSR_PERFEVTSEL0, MSR_PMC0

import vpmu_core
from vpmu_core.events import Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.testing import toy

MODELS = ("intel/skylake", "intel/icelake", "intel/sapphirerapids")
PLUGINS = [("intel_arch", vpmu_intel_arch), ("toy", toy)]


@pytest.mark.parametrize("cpu", MODELS)
@pytest.mark.parametrize("n,b", [(1_000_000, 100_000), (7, 0), (123_456_789, 3)])
def test_global_ctrl_window_counts_n_plus_1_and_b(cpu: str, n: int, b: int) -> None:
    host = vpmu_core.compose(cpu=cpu, mode="reference", plugins=PLUGINS)
    vm = host.create_vm(vcpus=1, pmu=GuestPmuConfig(), pin=[0])
    v = vm.vcpus[0]
    en = EVTSEL_EN | EVTSEL_OS | EVTSEL_USR
    v.wrmsr(MSR_GLOBAL_CTRL, 0)
    v.wrmsr(MSR_PERFEVTSEL0, 0x00C0 | en)  # instructions on PMC0
    v.wrmsr(MSR_PERFEVTSEL0 + 1, 0x00C4 | en)  # branches on PMC1
    v.wrmsr(MSR_FIXED_CTR_CTRL, 0x3)  # fixed0: instructions, OS+USR
    v.wrmsr(MSR_GLOBAL_CTRL, 0b11 | 1 << 32)
    v.execute(Work(instructions=n, branches=b))
    v.wrmsr(MSR_GLOBAL_CTRL, 0)  # this write retires while the counters still count: the "+1"
    assert v.rdmsr(MSR_PMC0) == n + 1
    assert v.rdmsr(MSR_FIXED_CTR0) == n + 1
    assert v.rdmsr(MSR_PMC0 + 1) == b


@pytest.mark.parametrize("cpu", MODELS)
def test_guest_perf_on_vcpu_counts_exactly(cpu: str) -> None:
    """The same driver on a vCPU port: guest perf through the reference mode."""
    from vpmu_core.perf.attr import PerfEventAttr

    host = vpmu_core.compose(cpu=cpu, mode="reference", plugins=PLUGINS)
    vm = host.create_vm(vcpus=1, pin=[0])
    ev = vm.guest_perf.perf_event_open(PerfEventAttr(config="branches", pinned=True), cpu=0)
    vm.vcpus[0].execute(Work(instructions=2_000_000, branches=200_000))
    ev.disable()
    assert ev.read().value == 200_000
