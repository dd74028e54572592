"""vpmu facility plugin `intel_archlbr`: Intel legacy LBR (`lbr`) and Architectural LBR
(`arch_lbr`, XSAVE component 15).

The entry point (group `vpmu.plugins`) names this module; it only exposes the hookimpl, with
no work at import.

What a mode can call (modes never see LBR specifics; everything below is generic over the
FacilityState protocol of vpmu_core/hw/facility.py, `g = vcpu.facilities[name]` the guest
state, `hw = vcpu.cpu.facilities[name]` the physical one):

* ``g.resource`` -> ``"lbr"``: the perf-scheduler resource a host branch-stack event (and
  KVM's vLBR event, a counterless ``HwEvent(mask=0, resources=(("lbr", key),))``) claims.
* ``g.active`` (recording now), ``g.has_msr/rdmsr/wrmsr`` (#GP as `GuestFault`),
  ``g.state_msrs()``; put ``name`` in ``vcpu.facility_blocked`` to stop guest recording
  (vLBR event not ACTIVE) and answer intercepted accesses yourself (KVM: read 0, drop).
* Context switch, charged by the cost model (switching.py):
  ``g.switch_in(hw, vcpu.costs, vcpu.charge, write_depth=False)`` at PMU load and
  ``g.switch_out(hw, vcpu.costs, vcpu.charge, write_depth=False)`` at PMU put;
  ``g.switch_cost("save" | "restore", costs)`` for the cycles alone. Arch LBR switches by
  XSAVES/XRSTORS (and zeroes the guest's records on a depth mismatch unless
  ``write_depth=True``); legacy LBR MSR by MSR.
* ``g.xsaves()`` / ``g.xrstors(data)`` / ``g.xsave_size()``: component 15 bytes (Arch LBR,
  ``xsave_component == 15``); for legacy LBR (``xsave_component is None``) an MSR image of
  ``state_msrs()`` so the same calls move its state.
* ``g.snapshot()`` / ``g.restore(state)``: migration, bit-exact (vCPU save_state/restore_state
  already call them).
"""

from vpmu_intel_archlbr.plugin import vpmu_register_facilities

__all__ = ["vpmu_register_facilities"]
__version__ = "0.1.0"
