"""The mistake issue 12 found in a third-party mode: trapped selector writes pushed to the
hardware by `eventsel_msr(pmc)` alone. On amd/zen2 the K7 EVNTSEL0-3 alias PerfCtrExtCore's
PERF_CTL0-3, so a guest programming a counter through an alias got a counter that
silently counted 0. The kit's `test_every_selector_alias_programs_its_counter` must fail
on a copy of this mode with that mistake planted, and pass on the mode itself."""

from __future__ import annotations

from typing import Any

import pytest
from vpmu_mode_xen_lazy.mode import OPTIONS, XenLazyMode

from vpmu_core.api import ModeSpec, hookimpl
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.testing.conformance import ModeConformance, load_plugin


class PushByEventselMsr(XenLazyMode):
    """xen_lazy with the planted mistake: a trapped write to a selector-like MSR is pushed
    only to the counter whose `eventsel_msr` it is; an alias finds no counter."""

    @hookimpl
    def vpmu_guest_wrmsr(self, vcpu: Any, msr: int, value: int) -> bool | None:
        guest = vcpu.pmu
        if msr not in guest.control_msrs() or msr == guest.fixed_ctrl_msr():
            return super().vpmu_guest_wrmsr(vcpu, msr, value)
        self._access(vcpu)
        guest.wrmsr(msr, value)
        self._st(vcpu).running = self._counting(guest)
        hw = vcpu.cpu.pmu
        for p in guest.gp:
            if msr == guest.eventsel_msr(p):  # the mistake: aliases are not looked up
                h = hw.pmc(p.idx)
                hw.wrmsr(hw.eventsel_msr(h), hw.hw_eventsel(value) if value else 0)
        return True


class _Plugin:
    def __init__(self, mode: type) -> None:
        self.mode = mode

    @hookimpl
    def vpmu_register_modes(self, register: Any) -> None:
        register(ModeSpec(name="xen_lazy", factory=self.mode, options=OPTIONS))


class _Kit(ModeConformance):
    mode_name = "xen_lazy"
    models = ("amd/zen2",)


def _run_check(mode: type) -> None:
    plugins = [("mode_xen_lazy", _Plugin(mode)), ("amd_perfmon", load_plugin("amd_perfmon"))]
    _Kit().test_every_selector_alias_programs_its_counter(plugins, build_catalog(plugins, []))


def test_the_check_passes_on_xen_lazy_on_zen2() -> None:
    _run_check(XenLazyMode)


def test_the_check_fails_on_the_planted_mistake() -> None:
    with pytest.raises(AssertionError, match=r"through 0xc0010000 counted 0"):
        _run_check(PushByEventselMsr)
