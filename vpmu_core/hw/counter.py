"""Counter registers: how a write through one MSR index reaches a counter's value.

A counter is often reachable through several MSRs with different write rules:

* ``"masked"``: the value is truncated to the counter width (AMD PERF_CTRn and the K7
  aliases, KVM `pmc_write_counter`: ``counter &= pmc_bitmask``; Intel fixed counters);
* ``"checked"``: full width, a bit above the width is #GP (Intel IA32_A_PMCx, SDM Vol. 3B
  20.2.6; KVM `intel_pmu_set_msr`: ``if (data & ~pmc_bitmask(pmc)) return 1``);
* ``"legacy"``: bits 31:0 sign-extended to the width (Intel IA32_PMCx, SDM Vol. 3B 20.2.6;
  KVM ``data = (s64)(s32)data``), except host-initiated writes (KVM_SET_MSRS), which KVM
  takes whole so a migration restores any value.

Reads always return the counter value (through the PMU's backend). Register one with
`PmuBase.add_counter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from vpmu_core.errors import gp
from vpmu_core.hw.pmc import sign_extend

if TYPE_CHECKING:
    from vpmu_core.hw.pmc import Pmc
    from vpmu_core.hw.pmu import PmuBase

CounterWrite = Literal["masked", "checked", "legacy"]
#: the low bits a legacy write keeps (then sign-extends): IA32_PMCx bits 31:0
LEGACY_BITS = 32


def counter_writer(pmu: PmuBase, pmc: Pmc, kind: CounterWrite, legacy_bits: int = LEGACY_BITS) -> Callable[[int], None]:
    """The write handler of one counter MSR (see the module docstring for the kinds)."""
    if kind == "masked":
        return lambda value: pmu.write_counter(pmc, value)
    if kind == "checked":

        def checked(value: int) -> None:
            if value & ~pmc.mask:
                raise gp(f"counter {pmc.idx:#x} <- {value:#x}: bits above width {pmc.width}")
            pmu.write_counter(pmc, value)

        return checked
    if kind == "legacy":

        def legacy(value: int) -> None:
            pmu.write_counter(pmc, value if pmu.host_initiated else sign_extend(value, legacy_bits, pmc.width))

        return legacy
    raise ValueError(f"unknown counter write kind {kind!r}")
