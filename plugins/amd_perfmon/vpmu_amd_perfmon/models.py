"""The AMD CPU models (k8, zen2, zen4) and the `CpuModel` object built from their data.

`resolve_guest` clamps a requested guest PMU like KVM's svm/pmu.c `amd_pmu_refresh`: the
version is 2 only with PerfMonV2 (else 1, 0 = vPMU off); with PerfMonV2 the counter count is
0x80000022 EBX[3:0] (any value up to the host's), without it the count follows from
CPUID alone: 6 with PerfCtrExtCore, 4 without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpmu_core.api import ConfigError, CpuidTable, GuestPmuConfig, PmuCapabilities, get_logger, parse_int

from vpmu_amd_perfmon import cpuid as amd_cpuid
from vpmu_amd_perfmon.driver import AmdPerfDriver
from vpmu_amd_perfmon.pmu import WIDTH, AmdPmu
from vpmu_amd_perfmon.registry import COST_PRESETS as COST_PRESETS
from vpmu_amd_perfmon.registry import DEFAULT_FREQ_HZ, DESCRIPTIONS, MODEL_OPTIONS

log = get_logger("vpmu.amd_perfmon")


@dataclass(frozen=True)
class AmdModelData:
    """What distinguishes one AMD part here: its signature and its PMU enumeration."""

    name: str
    description: str
    family: int
    model: int
    stepping: int
    max_basic: int
    max_ext: int
    ext_core: bool
    perfmon_v2: bool
    n_counters: int
    #: SVM LBR virtualization (CPUID 8000_000AH EDX[1]: family 10h and later), which KVM's
    #: `lbrv` module parameter uses by default where present
    lbrv: bool = True


K8 = AmdModelData(
    name="amd/k8",
    description=DESCRIPTIONS["amd/k8"],
    family=0x0F,
    model=0x4B,
    stepping=2,
    max_basic=0x1,
    max_ext=0x80000018,
    ext_core=False,
    perfmon_v2=False,
    n_counters=4,
    lbrv=False,  # K8 rev F has SVM without LBR virtualization
)
ZEN2 = AmdModelData(
    name="amd/zen2",
    description=DESCRIPTIONS["amd/zen2"],
    family=0x17,
    model=0x31,
    stepping=0,
    max_basic=0x10,
    max_ext=0x8000001F,
    ext_core=True,
    perfmon_v2=False,
    n_counters=6,
)
ZEN4 = AmdModelData(
    name="amd/zen4",
    description=DESCRIPTIONS["amd/zen4"],
    family=0x19,
    model=0x11,
    stepping=1,
    max_basic=0x10,
    max_ext=0x80000028,
    ext_core=True,
    perfmon_v2=True,
    n_counters=6,
)
MODELS: dict[str, AmdModelData] = {m.name: m for m in (K8, ZEN2, ZEN4)}


class AmdCpuModel:
    """A composed AMD CPU model (the core's `CpuModel` protocol)."""

    vendor = "amd"
    cost_preset = "amd"
    #: AMD's local APIC does not mask the LVT PMI entry on a counter overflow (comment in
    #: arch/x86/events/amd/core.c), and KVM masks the guest's LVTPC on PMI delivery only
    #: for Intel-compatible guest CPUID (arch/x86/kvm/lapic.c kvm_apic_local_deliver).
    lvtpc_masked_on_pmi = False
    #: the VM-exits KVM's SVM fastpath handles (arch/x86/kvm/svm/svm.c
    #: svm_exit_handlers_fastpath(), 6.18: SVM_EXIT_MSR writes, SVM_EXIT_HLT, SVM_EXIT_INVD;
    #: SVM has no VMX preemption timer)
    fastpath_exit_reasons = frozenset({"msr_write", "hlt", "invd"})

    def __init__(self, data: AmdModelData, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = set(options) - set(MODEL_OPTIONS)
        if unknown:
            raise ConfigError(f"{data.name} option", f"unknown {sorted(unknown)}", sorted(MODEL_OPTIONS))
        self.data = data
        self.name = data.name
        self.freq_hz = parse_int(f"{data.name}.freq_hz", options.get("freq_hz", DEFAULT_FREQ_HZ), minimum=1)
        self.features: dict[str, Any] = {}
        self.caps = PmuCapabilities(
            version=2 if data.perfmon_v2 else 1,
            gp_counters=data.n_counters,
            fixed_counters=0,
            gp_width=WIDTH,
            fixed_width=0,
            full_width_writes=False,
            global_regs=data.perfmon_v2,
            lbr=False,
        )

    # ---- guest configuration (KVM amd_pmu_refresh) -------------------------------------
    def resolve_guest(self, requested: GuestPmuConfig) -> GuestPmuConfig:
        """Fill the Nones from the host and clamp like KVM. See the module docstring."""
        host = self.caps
        version = host.version if requested.version is None else min(requested.version, host.version)
        if version >= 2:
            want = host.gp_counters if requested.gp_counters is None else requested.gp_counters
            gp = min(want, host.gp_counters, amd_cpuid.EBX_NUM_CORE_PMC)
        elif version == 1:
            # Without PerfMonV2 the guest's count is not a number userspace sets: it is 6 if
            # the guest CPUID has PerfCtrExtCore, else 4. A request below 6 clears the bit.
            want = host.gp_counters if requested.gp_counters is None else requested.gp_counters
            gp = amd_cpuid.EXT_CORE_COUNTERS if self.data.ext_core and want >= 6 else amd_cpuid.K7_COUNTERS
        else:
            gp = 0
        out = GuestPmuConfig(
            version=version,
            gp_counters=gp,
            fixed_counters=0,  # AMD has no fixed counters (KVM: nr_arch_fixed_counters = 0)
            full_width_writes=False,  # no PERF_CAPABILITIES on AMD; writes are 48-bit anyway
            lbr=False,  # LbrExtV2 is not modelled
            facility_options=requested.facility_options,
        )
        asked = requested.model_dump(exclude={"facility_options"}, exclude_none=True)
        if any(out.model_dump()[k] != v for k, v in asked.items()):
            log.debug("amd.guest_clamped", model=self.name, requested=requested.model_dump(), resolved=out.model_dump())
        return out

    def _guest_shape(self, cfg: GuestPmuConfig) -> tuple[int, int, bool, bool]:
        """(version, counters, PerfCtrExtCore, PerfMonV2) of a resolved guest config."""
        version = int(cfg.version or 0)
        n = int(cfg.gp_counters or 0)
        v2 = version >= 2
        ext = self.data.ext_core and version > 0 and (v2 or n == amd_cpuid.EXT_CORE_COUNTERS)
        return version, n, ext, v2

    # ---- factories -------------------------------------------------------------------------
    def make_pmu(self, guest: GuestPmuConfig | None = None) -> AmdPmu:
        zen = self.data.family >= 0x17
        if guest is None:
            d = self.data
            return AmdPmu(guest=False, n_counters=d.n_counters, ext_core=d.ext_core, perfmon_v2=d.perfmon_v2, zen=zen)
        version, n, ext, v2 = self._guest_shape(self.resolve_guest(guest))
        return AmdPmu(
            guest=True, n_counters=n, ext_core=ext, perfmon_v2=v2, zen=zen, version=version, lbrv=self.data.lbrv
        )

    def make_driver(self) -> AmdPerfDriver:
        return AmdPerfDriver()

    def cpuid_table(self, guest: GuestPmuConfig | None = None) -> CpuidTable:
        d = self.data
        kw: dict[str, Any] = dict(
            family=d.family, model=d.model, stepping=d.stepping, max_basic=d.max_basic, max_ext=d.max_ext
        )
        if guest is None:
            return amd_cpuid.build_table(
                **kw, ext_core=d.ext_core, perfmon_v2=d.perfmon_v2, n_counters=d.n_counters, guest=False
            )
        _, n, ext, v2 = self._guest_shape(self.resolve_guest(guest))
        return amd_cpuid.build_table(**kw, ext_core=ext, perfmon_v2=v2, n_counters=n, guest=True)

    def mediated_pmu_missing(self) -> list[str]:
        """What this host lacks for a mediated vPMU: KVM's vendor op
        `amd_pmu_is_mediated_pmu_supported()` (svm/pmu.c) requires PerfMonV2 (the global
        control/status registers and STATUS_SET)."""
        caps = self.caps
        if caps.version < 2 or not caps.global_regs:
            return [f"PerfMonV2 (global control/status registers), host PMU is v{caps.version}"]
        return []

    def describe(self) -> dict[str, Any]:
        d = self.data
        return {
            "name": self.name,
            "vendor": self.vendor,
            "description": d.description,
            "family": f"{d.family:#x}",
            "model": f"{d.model:#x}",
            "freq_hz": self.freq_hz,
            "ext_core": d.ext_core,
            "perfmon_v2": d.perfmon_v2,
            "caps": {
                "version": self.caps.version,
                "gp_counters": self.caps.gp_counters,
                "fixed_counters": 0,
                "gp_width": WIDTH,
                "global_regs": self.caps.global_regs,
            },
            "features": dict(self.features),
        }


def make_model(name: str, options: dict[str, Any] | None = None) -> AmdCpuModel:
    return AmdCpuModel(MODELS[name], options)
