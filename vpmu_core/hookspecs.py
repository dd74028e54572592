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
from typing import Any

from vpmu_core.markers import hookspec

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
def vpmu_register_commands(cli: Any) -> None:
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
def vpmu_vm_create(vm: Any) -> None:
    """A VM was created (KVM_CREATE_VM). Per-VM state may be attached to ``vm.mode_state``.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_destroy(vm: Any) -> None:
    """A VM is destroyed: release every resource it holds (kvm_arch_destroy_vm ->
    kvm_pmu_destroy; the mediated PMU reference, perf_release_mediated_pmu). Called after
    every vCPU was scheduled out; its vCPUs then leave the host. Keep what the report shows
    (per-vCPU figures) readable: the report lists destroyed VMs.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_create(vcpu: Any) -> None:
    """A vCPU was created (KVM_CREATE_VCPU). Raise ``PerfError`` to refuse (e.g. EBUSY).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_load(vcpu: Any, cpu: Any) -> None:
    """The vCPU task is scheduled in on host ``cpu`` (kvm_arch_vcpu_load / sched in).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_put(vcpu: Any, cpu: Any) -> None:
    """The vCPU task is scheduled out of host ``cpu`` (kvm_arch_vcpu_put).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_run_enter(vcpu: Any) -> None:
    """KVM_RUN ioctl entered (userspace -> kernel).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_run_leave(vcpu: Any) -> None:
    """KVM_RUN returns to userspace.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_run_loop_enter(vcpu: Any) -> None:
    """The inner run loop is entered (IRQs off, before the first VM-entry of the loop).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_run_loop_leave(vcpu: Any) -> None:
    """The inner run loop is left after a slow-path exit (IRQs still off).

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_entry(vcpu: Any) -> None:
    """Right before VM-entry: service requests (KVM_REQ_PMU), apply entry MSR loads.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vm_exit(vcpu: Any, reason: str, fastpath: bool) -> None:
    """Right after a VM-exit with its ``reason``; ``fastpath`` exits stay in the inner loop.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_msr_intercepted(vcpu: Any, msr: int, write: bool) -> bool | None:
    """Whether a guest access to ``msr`` VM-exits. First answer wins; None = intercepted.

    :return: False to let the access go to the hardware register (passthrough).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_rdmsr(vcpu: Any, msr: int) -> int | None:
    """Emulate an intercepted guest RDMSR. Raise ``GuestFault`` for #GP.

    :return: the value, or None to let the core read ``vcpu.pmu``/facility state.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_wrmsr(vcpu: Any, msr: int, value: int) -> bool | None:
    """Emulate an intercepted guest WRMSR. Raise ``GuestFault`` for #GP.

    :return: True if handled, None to let the core write ``vcpu.pmu``/facility state.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_rdpmc_intercepted(vcpu: Any) -> bool | None:
    """Whether RDPMC VM-exits for this vCPU. None = intercepted.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_rdpmc(vcpu: Any, ecx: int) -> int | None:
    """Emulate an intercepted RDPMC (raise ``GuestFault`` for #GP); None = core default.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_instruction_retired(vcpu: Any) -> None:
    """An instruction KVM emulates (an intercepted WRMSR, RDMSR, RDPMC or CPUID) completed:
    called inside its VM-exit, after its effect (`kvm_skip_emulated_instruction()` ->
    `kvm_pmu_instruction_retired()`), never for one that faulted. The counting window of
    DESIGN §5: count it under the PMU state as it is now (new GLOBAL_CTRL, selectors,
    counter values, event filter).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       called after the instruction took effect; ``vpmu_instruction_snapshot`` and the
       ``token`` argument are gone (issue 11).
    """


@hookspec
def vpmu_guest_cpuid(vcpu: Any, table: Any) -> None:
    """Adjust the guest CPUID table once at vCPU creation (e.g. hide a facility).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_host_pmi(cpu: Any, pmc: Any, overshoot: int) -> bool | None:
    """A host PMI for counter ``pmc`` on ``cpu``. True = claimed (e.g. a mediated guest's).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_host_perf_event_open(attr: Any, pid: int, cpu: int) -> int | None:
    """A host perf_event_open: return an errno to refuse it, None to allow.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_xsaves(vcpu: Any, mask: int) -> Any:
    """Guest XSAVES of PMU components in ``mask``; None = the core saves vCPU state.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def vpmu_guest_xrstors(vcpu: Any, area: Any, mask: int) -> bool | None:
    """Guest XRSTORS of PMU components; None = the core restores vCPU state.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_save_state(vcpu: Any, state: dict[str, Any]) -> None:
    """Add the mode's vPMU state to a migration ``state`` (sync live counts first). The state
    is JSON-safe (docs/migration-state.md): put the mode's own data, if any, under
    ``state["mode_state"]``; other top-level keys make restore refuse the state.

    .. versionadded:: 0.1
    """


@hookspec
def vpmu_vcpu_restore_state(vcpu: Any, state: dict[str, Any]) -> None:
    """Restore the mode's vPMU state from ``state`` (KVM_SET_MSRS then KVM_RUN): called after
    the core checked the whole state and wrote the registers (the vCPU is out of guest mode).

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Composition and report hooks (were plain mode methods the core looked up by name)
# ---------------------------------------------------------------------------------------


@hookspec
def vpmu_host_created(host: Any) -> None:
    """The composed host is built (its CPUs, host perf and ledgers exist, no VM yet): attach
    to the machine, e.g. watch host perf reschedules or build per-CPU state.

    :param host: the `vpmu_core.host.Host`.

    .. versionadded:: 0.2 (was the mode's plain ``attach(host)`` method)
    """


@hookspec(firstresult=True)
def vpmu_limit_guest_pmu(cfg: Any) -> Any:
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

    .. versionadded:: 0.2 (was the plain ``facility_allowed(name)`` method)
    """


@hookspec
def vpmu_filter_changed(vcpu: Any) -> None:
    """KVM_SET_PMU_EVENT_FILTER changed the VM's filter: re-evaluate ``vcpu``'s counters
    before its next VM-entry (kick it if it is in guest mode).

    .. versionadded:: 0.2 (was the plain ``filter_changed(vcpu)`` method)
    """


@hookspec(firstresult=True)
def vpmu_mode_report(host: Any) -> dict[str, Any] | None:
    """The report's ``mode`` section (JSON-safe, sorted-key friendly); None = empty.

    .. versionadded:: 0.2 (was the plain ``report(host)`` method)
    """


@hookspec(firstresult=True)
def vpmu_guest_counter_values(vcpu: Any) -> dict[str, int] | None:
    """What the guest would read from each of ``vcpu``'s counters now, by counter name (the
    report's ``guest_counters``, the trace's counter tracks). None = the core reads the
    guest PMU's registers.

    .. versionadded:: 0.2 (was the plain ``guest_counter_values(vcpu)`` method)
    """


@hookspec(firstresult=True)
def vpmu_fast_forward_state(vcpu: Any) -> Hashable | None:
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
