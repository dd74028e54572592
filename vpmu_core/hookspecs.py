"""vpmu hook specifications. The hooks are the documentation of the plugin contract.

Two families:

* **Registration hooks** are called once per discovery with a ``register`` callback.
  A plugin module implements them with ``@vpmu_core.hookimpl``.
* **Hypervisor hooks** are called by the core at run time. They are implemented by the
  composed *mode* object and by facility objects (registered per composition, never
  globally). The core resolves them once per composition; the hot path calls the
  implementations directly, so wrappers and ordering markers are not honoured on them.

Every hypervisor hook receives keyword arguments only (pluggy). ``firstresult`` hooks stop
at the first non-None answer; "None" means "not mine, use the core's default".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vpmu_core.plugins.markers import hookspec

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
        methods implement the hypervisor hooks below (decorated with ``@hookimpl``); if it
        has ``attach(host)``, the host calls it once it is built. Raise ``ConfigError`` for
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


REGISTRATION_HOOKS = (
    "vpmu_register_cpu_models",
    "vpmu_register_facilities",
    "vpmu_register_modes",
    "vpmu_register_commands",
    "vpmu_register_scenarios",
)
