"""A VM: its vCPUs, guest PMU configuration, exit profile, event filter and guest perf."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Literal

from vpmu_core.errors import ConfigError, PerfError
from vpmu_core.hv.filter import MAX_EVENTS, PmuEventFilter

if TYPE_CHECKING:
    from vpmu_core.engine.exits import ExitProfile
    from vpmu_core.engine.host import Host
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
        allowed = getattr(host.mode, "facility_allowed", None)
        if allowed is not None and not (allowed("lbr") or allowed("arch_lbr")):
            # the mode gives guests no LBR (merged mediated vPMU): CPUID and
            # PERF_CAPABILITIES must not advertise it either
            if pmu.lbr:
                raise ConfigError("pmu.lbr", f"mode {host.mode_name!r} gives guests no LBR", "false")
            pmu = pmu.model_copy(update={"lbr": False})
        if not any(n in host.facilities for n in ("lbr", "arch_lbr")):
            # no LBR facility composed: the guest really has no LBR MSRs, so nothing may
            # advertise them (PERF_CAPABILITIES[5:0] is non-zero only with the LBR MSRs:
            # vmx_get_perf_capabilities(), intel_pmu_refresh() -> intel_pmu_lbr_is_enabled())
            if pmu.lbr:
                raise ConfigError("pmu.lbr", "a guest LBR needs the lbr or arch_lbr facility", "false")
            pmu = pmu.model_copy(update={"lbr": False})
        self.pmu_config = host.model.resolve_guest(pmu)
        limit = getattr(host.mode, "limit_guest_pmu", None)
        if limit is not None:
            # the mode's own caps on what a guest can get (e.g. KVM's emulated vPMU exposes
            # at most 3 fixed counters), applied the way kvm_pmu_refresh clamps CPUID
            self.pmu_config = host.model.resolve_guest(limit(self.pmu_config))
        self.exit_profile = exits
        self.guest_mux_interval_ns = guest_mux_interval_ns
        self.filter: PmuEventFilter | None = None
        #: per-VM state of the mode
        self.mode_state: Any = None
        self._guest_perf: GuestPerf | None = None
        self.destroyed = False
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
            self.destroy()
            raise

    def __repr__(self) -> str:
        return f"VM({self.name}, vcpus={len(self.vcpus)})"

    def facility_enabled(self, name: str) -> bool:
        """A facility is exposed to the guest unless the config turns it off (lbr=False) or
        the mode does not give guests that facility (its optional `facility_allowed(name)`)."""
        if name in ("lbr", "arch_lbr") and self.pmu_config.lbr is False:
            return False
        allowed = getattr(self.host.mode, "facility_allowed", None)
        return allowed is None or bool(allowed(name))

    def set_pmu_event_filter(
        self,
        action: Literal["allow", "deny"],
        events: list[int] | tuple[int, ...] = (),
        fixed_counter_bitmap: int = 0,
        masked: bool = False,
    ) -> None:
        """KVM_SET_PMU_EVENT_FILTER (arch/x86/kvm/pmu.c kvm_vm_ioctl_set_pmu_event_filter).

        Every vCPU re-evaluates every counter before its next VM-entry."""
        if len(events) > MAX_EVENTS:
            raise PerfError(errno.E2BIG, f"at most {MAX_EVENTS} events (KVM_PMU_EVENT_FILTER_MAX_EVENTS)")
        try:
            self.filter = PmuEventFilter.build(action, list(events), fixed_counter_bitmap, masked)
        except ValueError as e:
            raise PerfError(errno.EINVAL, str(e)) from None
        for v in self.vcpus:
            fn = getattr(self.host.mode, "filter_changed", None)
            if fn is not None:
                fn(v)

    @property
    def guest_perf(self) -> GuestPerf:
        """Guest perf: the same perf core and vendor driver, over this VM's vCPUs."""
        if self._guest_perf is None:
            from vpmu_core.hv.guest_perf import GuestPerf

            self._guest_perf = GuestPerf(self)
        return self._guest_perf

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        for v in self.vcpus:
            cpu = v.cpu
            if cpu.current_task is v.task:
                cpu.switch_to(None)
        self.host.hooks.vm_destroy(vm=self)
        for v in self.vcpus:
            cpu = v.cpu
            if v.task in cpu.tasks:
                cpu.tasks.remove(v.task)
        if self in self.host.vms:
            self.host.vms.remove(self)
