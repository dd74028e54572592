"""Fixtures: hosts composed from explicitly named plugins (never what else is installed),
and a raw-MSR guest driver in the style of kvm-unit-tests' pmu.c."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import vpmu_amd_perfmon
import vpmu_intel_arch
from vpmu_core import ExitProfile, compose

import vpmu_mode_mediated

VENDOR_PLUGINS = {"intel": ("intel_arch", vpmu_intel_arch), "amd": ("amd_perfmon", vpmu_amd_perfmon)}
#: architectural encodings (Intel SDM Table 20-1; AMD PPR Core::X86::Pmc::Core)
EVENTS = {
    "intel": {"instructions": 0x00C0, "branches": 0x00C4, "cycles": 0x003C},
    "amd": {"instructions": 0x00C0, "branches": 0x00C2, "cycles": 0x0076},
}
USR, OS, INT, EN = 1 << 16, 1 << 17, 1 << 20, 1 << 22
LVTPC = 0x834


def make_host(cpu: str, cpus: int = 2, costs: dict[str, Any] | None = None, **options: Any) -> Any:
    vendor = cpu.split("/")[0]
    return compose(
        cpu=cpu,
        mode="mediated",
        cpus=cpus,
        mode_options=options,
        costs=costs,
        plugins=[VENDOR_PLUGINS[vendor], ("mode_mediated", vpmu_mode_mediated)],
    )


class GuestDriver:
    """A guest kernel programming its PMU through raw MSRs (kvm-unit-tests x86/pmu.c)."""

    def __init__(self, vcpu: Any, vendor: str) -> None:
        self.vcpu = vcpu
        self.pmu = vcpu.pmu
        self.events = EVENTS[vendor]
        self.globals = self.pmu.global_msrs()

    def sel_msr(self, i: int) -> int:
        return self.pmu.eventsel_msr(self.pmu.gp[i])

    def ctr_msr(self, i: int) -> int:
        return self.pmu.counter_msrs(self.pmu.gp[i])[0]

    def global_ctrl(self, value: int) -> None:
        self.vcpu.wrmsr(self.globals["ctrl"], value)

    def program(self, i: int, event: str, pmi: bool = False) -> None:
        self.vcpu.wrmsr(self.sel_msr(i), self.events[event] | USR | OS | EN | (INT if pmi else 0))

    def read(self, i: int) -> int:
        return self.vcpu.rdmsr(self.ctr_msr(i))


@pytest.fixture
def host_factory() -> Callable[..., Any]:
    return make_host


@pytest.fixture
def guest_driver() -> Callable[[Any, str], GuestDriver]:
    return GuestDriver


@pytest.fixture
def exits() -> Callable[..., ExitProfile]:
    def make(rate: float = 50_000, fastpath: float = 0.5, userspace: float = 0.01) -> ExitProfile:
        return ExitProfile(rate_per_s=rate, fastpath_share=fastpath, userspace_share=userspace)

    return make
