"""A VM: its vCPUs, guest PMU configuration, exit profile, event filter and guest perf."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Literal

from vpmu_core.errors import ConfigError, PerfError, VmDestroyedError
from vpmu_core.hv.config import FACILITY_SWITCHES
from vpmu_core.hv.filter import MAX_EVENTS, PmuEventFilter
from vpmu_core.hv.snapshot import VmSnapshot
from vpmu_core.perf.snapshot import snapshot_event

if TYPE_CHECKING:
    from vpmu_core.engine.exits import ExitProfile
    from vpmu_core.host import Host
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hv.guest_perf import GuestPerf
    from vpmu_core.hv.vcpu import VCpu


class VM:
    """KVM_CREATE_VM + KVM_CREATE_VCPU x n. See DESIGN §5."""

    def __init__(
        self,
        host: Host,
        name: str,
        *,
        vcpus: int,
        pmu: GuestPmuConfig,
        pin: list[int] | None,
        exits: ExitProfile,
        guest_mux_interval_ns: int = 4_000_000,
    ) -> None:
        from vpmu_core.hv.vcpu import VCpu

        if vcpus < 1:
            raise ConfigError("vcpus", f"must be >= 1, got {vcpus}")
        ncpu = len(host.cpus)
        if pin is not None:
            if len(pin) != vcpus:
                raise ConfigError("pin", f"needs one host CPU per vCPU ({vcpus}), got {len(pin)}")
            for c in pin:
                if not 0 <= c < ncpu:
                    raise ConfigError("pin", f"{c} is not a host CPU", f"0..{ncpu - 1}")
        self.host = host
        self.name = name
        allowed = host.hooks.facility_allowed
        for switch, what in FACILITY_SWITCHES.items():
            # the installed facilities this config field switches (FacilitySpec.guest_switch)
            names = [n for n, s in host.facility_switches.items() if s == switch]
            if names and all(allowed(name=n) is False for n in names):
                # the mode gives guests none of them (merged mediated vPMU: no LBR): CPUID
                # and PERF_CAPABILITIES must not advertise it either
                if getattr(pmu, switch):
                    raise ConfigError(f"pmu.{switch}", f"mode {host.mode_name!r} gives guests no {what}", "false")
                pmu = pmu.model_copy(update={switch: False})
            if not any(n in host.facilities for n in names):
                # none of them composed: the guest really has none of their MSRs, so nothing
                # may advertise them (PERF_CAPABILITIES[5:0] is non-zero only with the LBR MSRs:
                # vmx_get_perf_capabilities(), intel_pmu_refresh() -> intel_pmu_lbr_is_enabled())
                if getattr(pmu, switch):
                    needs = (
                        f"the {' or '.join(names)} facility"
                        if names
                        else f"a facility that gives it (none installed gives {what})"
                    )
                    raise ConfigError(f"pmu.{switch}", f"a guest {what} needs {needs}", "false")
                pmu = pmu.model_copy(update={switch: False})
        self.pmu_config = host.model.resolve_guest(pmu)
        limited = host.hooks.limit_guest_pmu(cfg=self.pmu_config)
        if limited is not None:
            # the mode's own caps on what a guest can get (e.g. KVM's emulated vPMU exposes
            # at most 3 fixed counters), applied the way kvm_pmu_refresh clamps CPUID
            self.pmu_config = host.model.resolve_guest(limited)
        self.exit_profile = exits
        self.guest_mux_interval_ns = guest_mux_interval_ns
        self.filter: PmuEventFilter | None = None
        #: per-VM state of the mode
        self.mode_state: Any = None
        self._guest_perf: GuestPerf | None = None
        self.destroyed = False
        #: host time (ns) of `destroy()`, None while the VM exists
        self.destroyed_ns: int | None = None
        for p in host.cpus:
            p.pmu.virtualization_enabled = True
        host.vms.append(self)
        host.hooks.vm_create(vm=self)
        self.vcpus: list[VCpu] = []
        try:
            for i in range(vcpus):
                cpu = pin[i] if pin is not None else i % ncpu
                v = VCpu(self, i, cpu)
                self.vcpus.append(v)
                host.hooks.vcpu_create(vcpu=v)
        except Exception:
            # KVM_CREATE_VCPU failed: the VM never existed for the caller (nothing to report)
            self.destroy()
            host.vms.remove(self)
            raise

    def __repr__(self) -> str:
        return f"VM({self.name}, vcpus={len(self.vcpus)})"

    def facility_enabled(self, name: str) -> bool:
        """A facility is exposed to the guest unless the config turns its switch off (its
        `FacilitySpec.guest_switch`, e.g. lbr=False) or
        the mode does not give guests that facility (`vpmu_facility_allowed`)."""
        switch = self.host.facility_switches.get(name)
        if switch is not None and getattr(self.pmu_config, switch) is False:
            return False
        return self.host.hooks.facility_allowed(name=name) is not False

    def set_pmu_event_filter(
        self,
        action: Literal["allow", "deny"],
        events: list[int] | tuple[int, ...] = (),
        fixed_counter_bitmap: int = 0,
        masked: bool = False,
    ) -> None:
        """KVM_SET_PMU_EVENT_FILTER (arch/x86/kvm/pmu.c kvm_vm_ioctl_set_pmu_event_filter).

        Every vCPU re-evaluates every counter before its next VM-entry."""
        self._check_alive("KVM_SET_PMU_EVENT_FILTER")
        if len(events) > MAX_EVENTS:
            raise PerfError(errno.E2BIG, f"at most {MAX_EVENTS} events (KVM_PMU_EVENT_FILTER_MAX_EVENTS)")
        try:
            self.filter = PmuEventFilter.build(action, list(events), fixed_counter_bitmap, masked)
        except ValueError as e:
            raise PerfError(errno.EINVAL, str(e)) from None
        for v in self.vcpus:
            self.host.hooks.filter_changed(vcpu=v)

    @property
    def guest_perf(self) -> GuestPerf:
        """Guest perf: the same perf core and vendor driver, over this VM's vCPUs."""
        if self._guest_perf is None:
            self._check_alive("guest perf")
            from vpmu_core.hv.guest_perf import GuestPerf

            self._guest_perf = GuestPerf(self)
        return self._guest_perf

    def set_tracer(self, tracer: Any) -> None:
        """Let guest perf (if the guest opened it) record into `tracer` too."""
        if self._guest_perf is not None:
            self._guest_perf.perf.tracer = tracer

    def snapshot(self) -> VmSnapshot:
        """The VM's figures now, as plain records (the report's source): guest perf events
        first (reading them is what a guest `read(2)` does), then each vCPU."""
        gp = self._guest_perf
        events = (
            tuple(snapshot_event(ev, gp.perf.truth_of(ev)) for ev in sorted(gp.events, key=lambda e: e.id))
            if gp is not None
            else ()
        )
        return VmSnapshot(
            name=self.name,
            vcpus=tuple(v.snapshot() for v in self.vcpus),
            guest_events=events,
            guest_perf_stats=gp.perf.stats.as_dict() if gp is not None else None,
            guest_kernel_errors=tuple(gp.errors) if gp is not None else (),
        )

    def destroy(self) -> None:
        """Destroy the VM (DESIGN §5 `vm.destroy()`): the VMM closed its last VM and vCPU file
        descriptors, so KVM tears it down (virt/kvm/kvm_main.c kvm_destroy_vm ->
        arch/x86/kvm/x86.c kvm_arch_destroy_vm -> kvm_destroy_vcpus -> kvm_arch_vcpu_destroy
        -> kvm_pmu_destroy). A second call does nothing.

        1. every vCPU thread has left KVM_RUN: it is scheduled out (the mode's put hooks run,
           KVM's perf events are scheduled out) and its queued guest work is dropped;
        2. the guest kernel dies with the VM: its perf events keep the counts and times they
           had now (the report shows them; they are closed for the API);
        3. the mode's `vpmu_vm_destroy` releases what KVM releases (perf events, vLBR events,
           the mediated PMU reference: `perf_release_mediated_pmu()`);
        4. the vCPU threads exit: they leave the host's run queues and task table.

        The VM stays in `host.vms` (flagged `destroyed`, with `destroyed_ns`) so the report
        keeps its figures up to now; every guest-facing call on it or its vCPUs then raises
        `VmDestroyedError` (EIO, as `kvm_vcpu_ioctl` on a dead VM)."""
        if self.destroyed:
            return
        for v in self.vcpus:
            cpu = v.cpu
            if cpu.current_task is v.task:
                cpu.switch_to(None)
            if v.in_vcpu_run:
                # KVM_RUN returned to the VMM before it closed the fds
                v.in_vcpu_run = False
                self.host.hooks.vcpu_run_leave(vcpu=v)
            v.task.queue.clear()
        self._freeze_guest_perf()
        self.destroyed = True
        self.destroyed_ns = self.host.now_ns
        self.host.hooks.vm_destroy(vm=self)
        for v in self.vcpus:
            cpu = v.cpu
            if v.task in cpu.tasks:
                cpu.tasks.remove(v.task)
            if self.host.tasks.get(v.task.pid) is v.task:
                del self.host.tasks[v.task.pid]

    def _freeze_guest_perf(self) -> None:
        """The guest's perf events end with their VM: fold each one's live count (read from
        the vCPU's register state directly: no guest instruction runs), stop its clocks and
        ground-truth window, and close it. Called after the vCPUs were scheduled out, when
        every mode holds the guest's counter values in `vcpu.pmu`."""
        gp = self._guest_perf
        if gp is None:
            return
        for gcpu, v in zip(gp.cpus, self.vcpus, strict=True):
            gcpu.port = _RegisterView(v)
        for ev in gp.events:
            if ev.closed:
                continue
            ev._sync(gp.perf.now_ns_for(ev))
            ev.count += ev._live_delta()
            ev._set_ticking(gp.perf.now_ns_for(ev), False, False)
            if ev.truth_open and gp.perf.truth_source is not None:
                ev.truth += gp.perf.truth_source(ev) - ev.truth_start
                ev.truth_open = False
            ev.closed = True

    def _check_alive(self, what: str) -> None:
        if self.destroyed:
            raise VmDestroyedError(f"{self.name}: {what}")


class _RegisterView:
    """A destroyed vCPU's counters as plain register state (the vendor model, no exits): what
    the guest's last reads would have returned."""

    def __init__(self, vcpu: VCpu) -> None:
        self._pmu = vcpu.pmu

    def rdmsr(self, msr: int) -> int:
        return int(self._pmu.rdmsr(msr))

    def wrmsr(self, msr: int, value: int) -> None:
        raise VmDestroyedError(f"wrmsr {msr:#x}")

    def rdpmc(self, ecx: int) -> int:
        return int(self._pmu.rdpmc(ecx))

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        raise VmDestroyedError(f"cpuid {leaf:#x}")
