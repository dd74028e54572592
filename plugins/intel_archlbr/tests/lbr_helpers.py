"""Shared helpers of the intel_archlbr tests (a uniquely named module: conftest.py puts this
folder on sys.path, which --import-mode=importlib does not do by itself)."""

from __future__ import annotations

from typing import Any

import vpmu_intel_arch
import vpmu_intel_archlbr

from vpmu_core import GuestPmuConfig, ModeSpec, compose, hookimpl
from vpmu_core.engine.exits import ExitProfile
from vpmu_core.testing import toy

PLUGINS: list[tuple[str, Any]] = [
    ("intel_arch", vpmu_intel_arch),
    ("intel_archlbr", vpmu_intel_archlbr),
    ("toy", toy),
]
LEGACY_CPUS = ("intel/skylake", "intel/icelake")
ARCH_CPU = "intel/sapphirerapids"

# Legacy LBR MSRs (facts §3)
DEBUGCTL = 0x1D9
LBR_SELECT = 0x1C8
LBR_TOS = 0x1C9
FROM0, TO0, INFO0 = 0x680, 0x6C0, 0xDC0
# Arch LBR MSRs (facts §4.2)
LBR_CTL = 0x14CE
LBR_DEPTH = 0x14CF
AFROM0, ATO0, AINFO0 = 0x1500, 0x1600, 0x1200
LER_FROM, LER_TO, LER_INFO = 0x1DD, 0x1DE, 0x1E0
CTL_ALL = 0x7F0007  # LBREn | OS | USR | every branch class
XSTATE_LBR = 1 << 15


def make_host(cpu: str, facility: str, seed: int = 0, options: dict[str, Any] | None = None, **kw: Any) -> Any:
    """A reference-mode host with one LBR facility attached."""
    return compose(
        cpu=cpu,
        mode=kw.pop("mode", "reference"),
        facilities=(facility,),
        plugins=kw.pop("plugins", PLUGINS),
        seed=seed,
        facility_options={facility: options or {}},
        **kw,
    )


def make_vcpu(
    cpu: str,
    facility: str,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    guest_options: dict[str, Any] | None = None,
    rate_per_s: int = 0,
    **kw: Any,
) -> Any:
    """One vCPU on host CPU 0 (no background exits unless `rate_per_s`)."""
    host = make_host(cpu, facility, seed, options, **kw)
    pmu = GuestPmuConfig(facility_options={facility: guest_options} if guest_options else {})
    vm = host.create_vm(vcpus=1, pin=[0], pmu=pmu, exits=ExitProfile(rate_per_s=rate_per_s))
    return vm.vcpus[0]


def legacy_records(v: Any) -> list[tuple[int, int, int]]:
    """Every legacy record as the guest reads it (32 x FROM/TO/INFO)."""
    return [(v.rdmsr(FROM0 + i), v.rdmsr(TO0 + i), v.rdmsr(INFO0 + i)) for i in range(32)]


def arch_records(v: Any, depth: int | None = None) -> list[tuple[int, int, int]]:
    """Every Arch LBR record below LBR_DEPTH, entry 0 youngest, as the guest reads it."""
    n = v.rdmsr(LBR_DEPTH) if depth is None else depth
    return [(v.rdmsr(AFROM0 + i), v.rdmsr(ATO0 + i), v.rdmsr(AINFO0 + i)) for i in range(n)]


class XsavesSwitchMode(toy.ReferenceMode):
    """The reference vPMU plus an LBR context switch around the inner run loop, the place
    the mediated vPMU switches PMU state (kvm-vpmu §2.5). It only uses the generic facility
    interface a real mode uses: `switch_in` at load, `switch_out` at put."""

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        super().__init__(model, options)
        self.write_depth = bool(options.get("write_depth", False))

    def _pairs(self, vcpu: Any) -> list[tuple[Any, Any]]:
        return [(g, vcpu.cpu.facilities[n]) for n, g in vcpu.facilities.items()]

    @hookimpl
    def vpmu_run_loop_enter(self, vcpu: Any) -> None:
        for g, hw in self._pairs(vcpu):
            g.switch_in(hw, vcpu.costs, vcpu.charge, write_depth=self.write_depth)

    @hookimpl
    def vpmu_run_loop_leave(self, vcpu: Any) -> None:
        for g, hw in self._pairs(vcpu):
            g.switch_out(hw, vcpu.costs, vcpu.charge, write_depth=self.write_depth)


class _SwitchPlugin:
    @hookimpl
    def vpmu_register_modes(self, register: Any) -> None:
        register(
            ModeSpec(
                name="lbr_switch",
                factory=XsavesSwitchMode,
                description="reference + LBR switch around the run loop",
                options={"write_depth": "write LBR_DEPTH before XRSTORS (Xen's order)"},
            )
        )


SWITCH_PLUGINS: list[tuple[str, Any]] = [*PLUGINS, ("lbr_switch", _SwitchPlugin())]
