"""Saving and restoring LBR state at a mode's PMU context switch, charged by the cost model.

Why here and not in the modes: how LBR state moves is a property of the facility (Arch LBR
has XSAVE component 15; legacy LBR is MSR by MSR) and so is its trap (the XRSTORS depth
rule). A mode only decides *when* (mediated: around the inner run loop); it calls

    guest_state.switch_in(hw_state, costs, charge)    # PMU load: host LBR out, guest LBR in
    guest_state.switch_out(hw_state, costs, charge)   # PMU put:  guest LBR out, host LBR in

with ``hw_state = vcpu.cpu.facilities[name]``, ``guest_state = vcpu.facilities[name]``,
``costs = vcpu.costs`` and ``charge = vcpu.charge`` (``charge(op, cycles)``).

Charges (`vpmu_core.costs.CostModel`):
* Arch LBR: one XSAVES and one XRSTORS per switch, each ``xsaves_base + xsaves_per_byte x
  xsave_size()`` (ops ``lbr_xsaves`` / ``lbr_xrstors``); with ``write_depth=True`` (Xen's
  order: write LBR_DEPTH before XRSTORS) one ``wrmsr_pmu`` more (op ``lbr_depth_wrmsr``).
* legacy LBR: ``rdmsr_pmu`` per MSR of `state_msrs()` to save and ``wrmsr_pmu`` per MSR to
  restore (ops ``lbr_rdmsr`` / ``lbr_wrmsr``).

Effect: the guest's records survive, except that an XSAVES-only load (KVM's flow) of a guest
whose IA32_LBR_DEPTH differs from the physical one (the host's) runs XRSTORS against the
wrong depth and zeroes every guest record (`policy.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from vpmu_core.api import get_logger

log = get_logger("vpmu.lbr")

Charge = Callable[..., None]
Direction = Literal["save", "restore"]


def switch_cost(state: Any, direction: Direction, costs: Any) -> int:
    """Host cycles to save (`"save"`) or restore (`"restore"`) `state` once."""
    if state.xsave_component is not None:
        return int(costs.xsaves_base + math.ceil(costs.xsaves_per_byte * state.xsave_size()))
    per = costs.rdmsr_pmu if direction == "save" else costs.wrmsr_pmu
    return int(per * len(state.state_msrs()))


def _ops(state: Any) -> tuple[str, str]:
    return ("lbr_xsaves", "lbr_xrstors") if state.xsave_component is not None else ("lbr_rdmsr", "lbr_wrmsr")


def switch_in(guest: Any, hw: Any, costs: Any, charge: Charge, write_depth: bool = False) -> None:
    """PMU load: save the host's LBR state, load the guest's (see module docstring)."""
    save_op, restore_op = _ops(hw)
    charge(save_op, switch_cost(hw, "save", costs))
    if guest.xsave_component is not None:
        if write_depth:
            charge("lbr_depth_wrmsr", int(costs.wrmsr_pmu))
            physical_depth = guest.depth
        else:
            physical_depth = hw.depth
        charge(restore_op, switch_cost(guest, "restore", costs))
        wiped = guest.load_image(guest.xsaves(), physical_depth)
        if wiped:
            log.debug("lbr.xrstors_depth_mismatch", guest_depth=guest.depth, physical_depth=physical_depth)
    else:
        charge(restore_op, switch_cost(guest, "restore", costs))


def switch_out(guest: Any, hw: Any, costs: Any, charge: Charge, write_depth: bool = False) -> None:
    """PMU put: save the guest's LBR state, restore the host's (its depth always matches)."""
    save_op, restore_op = _ops(guest)
    charge(save_op, switch_cost(guest, "save", costs))
    if write_depth and hw.xsave_component is not None:
        charge("lbr_depth_wrmsr", int(costs.wrmsr_pmu))
    charge(restore_op, switch_cost(hw, "restore", costs))
