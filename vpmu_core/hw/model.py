"""What a vendor plugin provides: a CPU model (PMU factory, perf driver, CPUID)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vpmu_core.hw.cpuid import CpuidTable

if TYPE_CHECKING:
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hw.pmu import PmuBase
    from vpmu_core.perf.driver import PerfDriver


@dataclass(frozen=True)
class PmuCapabilities:
    """The PMU of a model (or of a guest configuration), as CPUID enumerates it."""

    version: int
    gp_counters: int
    fixed_counters: int
    gp_width: int
    fixed_width: int
    full_width_writes: bool = False
    #: the vendor's "has global control/status registers" (Intel v2+, AMD PerfMonV2)
    global_regs: bool = False
    lbr: bool = False


class CpuModel(Protocol):
    """A concrete CPU, built by a vendor plugin's factory. See docs/writing-plugins.md."""

    name: str
    vendor: str
    freq_hz: int
    caps: PmuCapabilities
    #: name of the cost preset the model's numbers come from ("intel", "amd", ...: a preset
    #: some installed spec declares in `cost_presets`), None for the core's defaults
    cost_preset: str | None

    def make_pmu(self, guest: GuestPmuConfig | None = None) -> PmuBase:
        """A PMU register model: physical when `guest` is None, else the guest-visible PMU."""
        ...

    def make_driver(self) -> PerfDriver:
        """The perf driver for this hardware (serves host perf and guest perf)."""
        ...

    def cpuid_table(self, guest: GuestPmuConfig | None = None) -> CpuidTable:
        """CPUID of the host (None) or of a guest with this PMU configuration."""
        ...

    def resolve_guest(self, requested: GuestPmuConfig) -> GuestPmuConfig:
        """Fill the Nones from the host and clamp like KVM (raise ConfigError when invalid)."""
        ...

    def describe(self) -> dict[str, Any]: ...
