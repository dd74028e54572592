"""vpmu hook specifications. The hooks are the documentation of the plugin contract.

Two families:

* **Registration hooks** are called once per discovery with a ``register`` callback.
  A plugin module implements them with ``@vpmu_core.hookimpl``.
* **Hypervisor hooks** are called by the core at run time. They are implemented by the
  composed *mode* object and by facility objects (registered per composition, never
  globally). The core resolves them once per composition; the hot path calls the
  implementations directly. Facility implementations run before the mode's (registered
  after it); ``tryfirst``/``trylast`` are honoured; wrappers are refused at compose.

Every hypervisor hook receives keyword arguments only (pluggy). ``firstresult`` hooks stop
at the first non-None answer; "None" means "not mine, use the core's default".

The run loop fires them in this order (arch/x86/kvm/x86.c), for one vCPU:

1. ``vpmu_vcpu_load`` when its thread is scheduled in (kvm_sched_in), ``vpmu_vcpu_put``
   when it is scheduled out (after a forced exit if it was in guest mode);
2. ``vpmu_vcpu_run_enter`` at KVM_RUN (vcpu_run), ``vpmu_run_loop_enter`` when the inner
   run loop of vcpu_enter_guest is entered;
3. ``vpmu_vm_entry`` before every VM-entry (requests serviced here; the core then injects a
   requested PMI through the LVTPC);
4. guest work; a guest MSR/RDPMC/CPUID access asks ``vpmu_msr_intercepted`` /
   ``vpmu_rdpmc_intercepted``: passed through, the hardware executes it; intercepted, it is
   a VM-exit whose handler calls ``vpmu_guest_wrmsr`` / ``vpmu_guest_rdmsr`` /
   ``vpmu_guest_rdpmc`` and then ``vpmu_instruction_retired`` if it did not fault;
5. ``vpmu_vm_exit`` at every VM-exit (reason, fastpath); a fastpath exit returns to 3; a
   slow one calls ``vpmu_run_loop_leave`` (its handler runs after it) and then
   ``vpmu_run_loop_enter`` again; an exit to userspace also calls ``vpmu_vcpu_run_leave``
   and ``vpmu_vcpu_run_enter``;
6. ``vpmu_host_pmi`` whenever a host counter overflows (any time), ``vpmu_vm_destroy`` at
   KVM_DESTROY.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from vpmu_core.markers import hookspec

if TYPE_CHECKING:  # the pytest way: real types for the specs, no import at run time
    import click

    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.host import Host
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hv.ff_rules import FastForwardRules
    from vpmu_core.hv.vcpu import VCpu
    from vpmu_core.hv.vm import VM
    from vpmu_core.hv.xsave import XsaveArea
    from vpmu_core.hw.cpuid import CpuidTable
    from vpmu_core.hw.pmc import Pmc
    from vpmu_core.perf.attr import PerfEventAttr

# ---------------------------------------------------------------------------------------
# Registration hooks
# ---------------------------------------------------------------------------------------


@hookspec
def vpmu_register_cpu_models(register: Callable[..., None]) -> None:
    """Register CPU models (vendor plugins).

    :param register: call ``register(CpuModelSpec(name="intel/icelake", vendor="intel",
        factory=make_icelake, description=..., options={...}))`` once per model.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def vpmu_register_cpu_models(register):
            register(CpuModelSpec(name="acme/one", vendor="acme", factory=AcmeOne))
    """


@hookspec
def vpmu_register_facilities(register: Callable[..., None]) -> None:
    """Register facilities (LBR, Arch LBR, ...).

    :param register: call ``register(FacilitySpec(name="lbr", factory=..., applies_to=...))``.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_register_modes(register: Callable[..., None]) -> None:
    """Register virtualization modes.

    :param register: call ``register(ModeSpec(name="emulated", factory=EmulatedMode,
        options={"name": "help"}))``. ``factory(model, options)`` returns an object whose
        methods implement the hypervisor hooks below (decorated with ``@hookimpl``;
        ``vpmu_host_created(host)`` runs once the host is built). Raise ``ConfigError`` for
        a model the mode cannot run on (e.g. a missing capability).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``vpmu`` command.

    :param cli: the root ``click.Group``; call ``cli.add_command(cmd)``.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_register_scenarios(register: Callable[..., None]) -> None:
    """Ship scenario files.

    :param register: call ``register(name, path)`` with a YAML/TOML scenario path.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Hypervisor hooks (implemented by the composed mode and facilities)
# ---------------------------------------------------------------------------------------


@hookspec
def vpmu_vm_create(vm: VM) -> None:
    """A VM was created (KVM_CREATE_VM). Per-VM state may be attached to ``vm.mode_state``.

    :param vm: the `VM` (``vm.vcpus``, ``vm.mode_state``, ``vm.filter``).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_destroy(vm: VM) -> None:
    """A VM is destroyed: release every resource it holds (kvm_arch_destroy_vm ->
    kvm_pmu_destroy; the mediated PMU reference, perf_release_mediated_pmu). Called after
    every vCPU was scheduled out; its vCPUs then leave the host. Keep what the report shows
    (per-vCPU figures) readable: the report lists destroyed VMs.

    :param vm: the `VM` (``vm.vcpus``, ``vm.mode_state``, ``vm.filter``).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_create(vcpu: VCpu) -> None:
    """A vCPU was created (KVM_CREATE_VCPU). Raise ``PerfError`` to refuse (e.g. EBUSY).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_load(vcpu: VCpu, cpu: HostCpu) -> None:
    """The vCPU task is scheduled in on host ``cpu`` (kvm_arch_vcpu_load / sched in).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param cpu: the `HostCpu` (``cpu.pmu`` the physical PMU).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_put(vcpu: VCpu, cpu: HostCpu) -> None:
    """The vCPU task is scheduled out of host ``cpu`` (kvm_arch_vcpu_put).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param cpu: the `HostCpu` (``cpu.pmu`` the physical PMU).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_run_enter(vcpu: VCpu) -> None:
    """KVM_RUN ioctl entered (userspace -> kernel).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_run_leave(vcpu: VCpu) -> None:
    """KVM_RUN returns to userspace.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_run_loop_enter(vcpu: VCpu) -> None:
    """The inner run loop is entered (IRQs off, before the first VM-entry of the loop).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_run_loop_leave(vcpu: VCpu) -> None:
    """The inner run loop is left after a slow-path exit (IRQs still off).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_entry(vcpu: VCpu) -> None:
    """Right before VM-entry: service requests (KVM_REQ_PMU), apply entry MSR loads.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_exit(vcpu: VCpu, reason: str, fastpath: bool) -> None:
    """Right after a VM-exit with its ``reason``; ``fastpath`` exits stay in the inner loop.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param reason: the exit reason (e.g. ``"wrmsr"``, ``"hlt"``, ``"pmi"``).
    :param fastpath: True for an exit handled in the fastpath (the inner loop re-enters).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_msr_intercepted(vcpu: VCpu, msr: int, write: bool) -> bool | None:
    """Whether a guest access to ``msr`` VM-exits. First answer wins; None = intercepted.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param msr: the MSR index.
    :param write: True for WRMSR, False for RDMSR.

    :return: False to let the access go to the hardware register (passthrough).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_rdmsr(vcpu: VCpu, msr: int) -> int | None:
    """Emulate an intercepted guest RDMSR. Raise ``GuestFault`` for #GP.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param msr: the MSR index.

    :return: the value, or None to let the core read ``vcpu.pmu``/facility state.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_wrmsr(vcpu: VCpu, msr: int, value: int) -> bool | None:
    """Emulate an intercepted guest WRMSR. Raise ``GuestFault`` for #GP.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param msr: the MSR index.
    :param value: the value the guest writes.

    :return: True if handled, None to let the core write ``vcpu.pmu``/facility state.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_rdpmc_intercepted(vcpu: VCpu) -> bool | None:
    """Whether RDPMC VM-exits for this vCPU. None = intercepted.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_rdpmc(vcpu: VCpu, ecx: int) -> int | None:
    """Emulate an intercepted RDPMC (raise ``GuestFault`` for #GP); None = core default.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param ecx: the RDPMC selector (ECX) the guest passed.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_instruction_retired(vcpu: VCpu) -> None:
    """An instruction KVM emulates (an intercepted WRMSR, RDMSR, RDPMC or CPUID) completed:
    called inside its VM-exit, after its effect (`kvm_skip_emulated_instruction()` ->
    `kvm_pmu_instruction_retired()`), never for one that faulted. The counting window of
    DESIGN §5: count it under the PMU state as it is now (new GLOBAL_CTRL, selectors,
    counter values, event filter).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       called after the instruction took effect; ``vpmu_instruction_snapshot`` and the
       ``token`` argument are gone (issue 11).
    """


@hookspec
def vpmu_guest_cpuid(vcpu: VCpu, table: CpuidTable) -> None:
    """Adjust the guest CPUID table once at vCPU creation (e.g. hide a facility).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param table: the guest's `CpuidTable`, adjusted in place.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_host_pmi(cpu: HostCpu, pmc: Pmc, overshoot: int) -> bool | None:
    """A host PMI for counter ``pmc`` on ``cpu``. True = claimed (e.g. a mediated guest's).

    :param cpu: the `HostCpu` (``cpu.pmu`` the physical PMU).
    :param pmc: the overflowed `Pmc` of the physical PMU.
    :param overshoot: events counted past the wrap before the PMI (skid).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_host_perf_event_open(attr: PerfEventAttr, pid: int, cpu: int) -> int | None:
    """A host perf_event_open: return an errno to refuse it, None to allow.

    :param attr: the `PerfEventAttr` of the event being opened.
    :param pid: the task pid (-1 for a per-CPU event).
    :param cpu: the host CPU index of the event (-1 for a task event on any CPU).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_xsaves(vcpu: VCpu, mask: int) -> XsaveArea | None:
    """Guest XSAVES of PMU components in ``mask``; None = the core saves vCPU state.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param mask: the requested-feature bitmap (RFBM) of the XSAVE state components.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_xrstors(vcpu: VCpu, area: XsaveArea, mask: int) -> bool | None:
    """Guest XRSTORS of PMU components; None = the core restores vCPU state.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param area: the `XsaveArea` the guest restores from.
    :param mask: the requested-feature bitmap (RFBM) of the XSAVE state components.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_save_state(vcpu: VCpu, state: dict[str, Any]) -> None:
    """Add the mode's vPMU state to a migration ``state`` (sync live counts first). The state
    is JSON-safe (docs/migration-state.md): put the mode's own data, if any, under
    ``state["mode_state"]``; other top-level keys make restore refuse the state.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param state: the migration state dict (JSON-safe, docs/migration-state.md).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_restore_state(vcpu: VCpu, state: dict[str, Any]) -> None:
    """Restore the mode's vPMU state from ``state`` (KVM_SET_MSRS then KVM_RUN): called after
    the core checked the whole state and wrote the registers (the vCPU is out of guest mode).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).
    :param state: the migration state dict (JSON-safe, docs/migration-state.md).

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Composition and report hooks (were plain mode methods the core looked up by name)
# ---------------------------------------------------------------------------------------


@hookspec
def vpmu_host_created(host: Host) -> None:
    """The composed host is built (its CPUs, host perf and ledgers exist, no VM yet): attach
    to the machine, e.g. watch host perf reschedules or build per-CPU state.

    :param host: the `vpmu_core.host.Host`.

    .. versionadded:: 0.2 (was the mode's plain ``attach(host)`` method)
    """


@hookspec(firstresult=True)
def vpmu_limit_guest_pmu(cfg: GuestPmuConfig) -> GuestPmuConfig | None:
    """The mode's caps on a guest PMU, applied the way ``kvm_pmu_refresh`` clamps CPUID.

    :param cfg: the `GuestPmuConfig` resolved against the host model.
    :return: the capped config (the core resolves it against the model again), or None
        for no cap.

    .. versionadded:: 0.2 (was the plain ``limit_guest_pmu(cfg)`` method)
    """


@hookspec(firstresult=True)
def vpmu_facility_allowed(name: str) -> bool | None:
    """Whether guests may get facility ``name`` under this mode (the merged mediated vPMU
    gives none). None = allowed.

    :param name: the facility name (e.g. as registered by a facility plugin).

    .. versionadded:: 0.2 (was the plain ``facility_allowed(name)`` method)
    """


@hookspec
def vpmu_filter_changed(vcpu: VCpu) -> None:
    """KVM_SET_PMU_EVENT_FILTER changed the VM's filter: re-evaluate ``vcpu``'s counters
    before its next VM-entry (kick it if it is in guest mode).

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.2 (was the plain ``filter_changed(vcpu)`` method)
    """


@hookspec(firstresult=True)
def vpmu_mode_report(host: Host) -> dict[str, Any] | None:
    """The report's ``mode`` section (JSON-safe, sorted-key friendly); None = empty.

    :param host: the composed `vpmu_core.host.Host`.

    .. versionadded:: 0.2 (was the plain ``report(host)`` method)
    """


@hookspec(firstresult=True)
def vpmu_guest_counter_values(vcpu: VCpu) -> dict[str, int] | None:
    """What the guest would read from each of ``vcpu``'s counters now, by counter name (the
    report's ``guest_counters``, the trace's counter tracks). None = the core reads the
    guest PMU's registers.

    :param vcpu: the `VCpu` (``vcpu.pmu``: its guest PMU; ``vcpu.cpu``: the host CPU it is on).

    .. versionadded:: 0.2 (was the plain ``guest_counter_values(vcpu)`` method)
    """


@hookspec(firstresult=True)
def vpmu_fast_forward_state(vcpu: VCpu) -> Hashable | None:
    """The mode's structural state of ``vcpu`` at a background VM-exit, for the exact
    fast-forward of exits (vpmu_core/hv/fast_forward.py): a hashable value that is equal
    whenever an exit would do the same thing (flags, pending requests, what is loaded
    where; never a counter value or a time). None = run every exit one by one (the
    default: a mode that does not implement this hook never fast-forwards).

    The core learns what one exit changes from two real ones at the same state, and adds it
    in bulk; it refuses on its own any exit that is not a fixed point. A mode implementing
    this promises only that its exit hooks do not look at values they do not change and
    that are not part of this answer.

    :param vcpu: the `VCpu` at the exit point (in guest mode, nothing pending).

    .. versionadded:: 0.3
    """


@hookspec(firstresult=True)
def vpmu_fast_forward_rules(vcpu: VCpu) -> FastForwardRules | None:
    """The fields of ``vcpu.mode_state`` an exit overwrites with a value that depends on
    where the exit lies, and how each is recomputed (`ExitClock`, `ExitGuestCycles`,
    `ExitConstant`), with the guest counters the exit puts and loads
    (``switched_counters``): a `FastForwardRules` (vpmu_core/hv/ff_rules.py). Optional;
    asked once per vCPU, at its first exit point with a `vpmu_fast_forward_state` answer.

    Without it an exit that moves a field by different amounts in its two probes (a
    context switch that records the load time the next put measures from) runs for real
    at its exact point. With it, the core checks every rule on both probes (the constant
    of each must be the same in both) and adds the exit in bulk, setting each field to
    what that exit would have left; a field no rule reproduces keeps the exit real. The
    core has its own rules for the values it owns: perf's reschedule times, a
    sampling event's start value, and the guest counters a switch saves (for
    ``switched_counters`` only).

    A mode declaring fields promises that what an exit adds does not depend on the guest
    cycles since the exit before it (a window from the last load to this put subtracts
    them), only on what that exit left. The core checks the rest: every exit kind at a
    signature must leave the fields alike relative to its own end, and so must the exit
    before each probe and before each batch; otherwise the exits run for real.

    :param vcpu: the `VCpu` at the exit point (in guest mode, nothing pending).

    .. versionadded:: 0.4
    """


#: the plain mode methods these hooks replace: a mode that still has one is refused at
#: compose time with the hook's name (it would silently do nothing)
LEGACY_MODE_METHODS = {
    "attach": "vpmu_host_created",
    "limit_guest_pmu": "vpmu_limit_guest_pmu",
    "facility_allowed": "vpmu_facility_allowed",
    "filter_changed": "vpmu_filter_changed",
    "report": "vpmu_mode_report",
    "guest_counter_values": "vpmu_guest_counter_values",
    "exits_are_inert": "vpmu_fast_forward_state",
}


REGISTRATION_HOOKS = (
    "vpmu_register_cpu_models",
    "vpmu_register_facilities",
    "vpmu_register_modes",
    "vpmu_register_commands",
    "vpmu_register_scenarios",
)
