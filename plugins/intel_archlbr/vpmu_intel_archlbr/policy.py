"""The depth rule for guests: which IA32_LBR_DEPTH values a guest may use.

Why a policy: the Arch LBR vPMU series (seed 001, Yang Weijiang's cover letter, Sean's
reply) restricts a guest to the host's depth, because (1) any LBR_DEPTH write zeroes every
record and (2) XRSTORS zeroes every record when the saved depth differs from the current
IA32_LBR_DEPTH. A mode that switches LBR state with XSAVES/XRSTORS alone (no DEPTH write)
runs the guest's XRSTORS against the host's depth, so a guest with another depth loses its
records at every switch. Making the rule switchable lets a test or scenario show exactly that.

* ``"host_only"`` (default, KVM): guest CPUID.1CH:EAX[7:0] enumerates only the host's depth;
  writing any other depth is #GP.
* ``"any"``: the guest sees every depth the CPU supports and may pick any of them.
"""

from __future__ import annotations

from typing import Literal, get_args

from vpmu_core.api import ConfigError

DepthRule = Literal["host_only", "any"]
DEPTH_RULES: tuple[str, ...] = get_args(DepthRule)
DEFAULT_RULE: DepthRule = "host_only"


def check_rule(value: object) -> DepthRule:
    if value not in DEPTH_RULES:
        raise ConfigError("facility_options.arch_lbr.depth_rule", f"unknown rule {value!r}", ", ".join(DEPTH_RULES))
    return value  # type: ignore[return-value]


def guest_depths(rule: DepthRule, host_depth: int, supported: tuple[int, ...]) -> tuple[int, ...]:
    """Depths a guest may write to IA32_LBR_DEPTH (and sees in CPUID.1CH)."""
    return (host_depth,) if rule == "host_only" else supported


def depth_bitmap(depths: tuple[int, ...]) -> int:
    """CPUID.1CH:EAX[7:0]: bit n set <=> depth 8 x (n + 1) supported."""
    bits = 0
    for d in depths:
        bits |= 1 << (d // 8 - 1)
    return bits


def check_depth(value: object, allowed: tuple[int, ...], field: str) -> int:
    if not isinstance(value, int) or value not in allowed:
        raise ConfigError(field, f"unsupported LBR depth {value!r}", ", ".join(map(str, allowed)))
    return value
