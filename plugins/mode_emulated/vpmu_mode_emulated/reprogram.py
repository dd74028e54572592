"""KVM_REQ_PMU: the deferred perf work done at VM-entry (arch/x86/kvm/pmu.c).

A guest control write only sets a bit in `reprogram_pmi`; `kvm_pmu_handle_event` runs
before the next VM-entry and calls `reprogram_counter` for every set bit:

1. `pmc_pause_counter`: pause the event and fold its count (and the emulated count) into
   the base; an emulated count that wrapped the counter is an overflow to inject;
2. not allowed (global/local enable, event filter) -> return with the event left paused;
3. unchanged config -> reuse the event (`pmc_resume_counter`: new period, enable);
4. otherwise release the event and create a new one (`pmc_reprogram_counter`).

A failed creation re-sets the bit without a new request, so it is retried at the next
KVM_REQ_PMU. `kvm_pmu_cleanup` (lazy release, set up at sched-in) runs after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.api import PerfError, PerfEventAttr, get_logger

from vpmu_mode_emulated.backend import get_sample_period, pmc_read_counter
from vpmu_mode_emulated.filtering import pmc_event_is_allowed
from vpmu_mode_emulated.kvm_pmc import bits
from vpmu_mode_emulated.overflow import kvm_pmu_overflow, make_overflow_handler

if TYPE_CHECKING:
    from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu
    from vpmu_mode_emulated.perf_api import KvmPerfCalls

log = get_logger("vpmu.mode_emulated")

#: AMD64_RAW_EVENT_MASK = X86_RAW_EVENT_MASK (event, umask, edge, inv, cmask) plus event
#: select bits 35:32 (arch/x86/include/asm/perf_event.h). KVM masks the guest selector with
#: `pmu->raw_event_mask` before handing it to perf, dropping USR/OS/INT/EN/PC/AnyThread and
#: AMD's Host/GuestOnly. Intel's X86_RAW_EVENT_MASK differs only in bits 35:32 (IN_TX with
#: TSX), which Intel's reserved-bit check keeps clear. A vendor model can override it with
#: a `raw_event_mask` attribute on its PMU.
DEFAULT_RAW_EVENT_MASK = 0xF_FF84_FFFF


def raw_event_mask(vcpu: Any) -> int:
    return int(getattr(vcpu.pmu, "raw_event_mask", DEFAULT_RAW_EVENT_MASK))


def fixed_field(kp: KvmPmc) -> int:
    """The 4-bit FIXED_CTR_CTRL field KVM uses as a fixed counter's `current_config`,
    rebuilt from the normalized controls (OS bit 0, USR bit 1, PMI bit 3)."""
    p = kp.pmc
    return (1 if p.os else 0) | (2 if p.usr else 0) | (8 if p.int_en else 0)


def pmc_pause_counter(kp: KvmPmc, api: KvmPerfCalls, charge: bool) -> tuple[bool, bool]:
    """`pmc_pause_counter`. Returns (emulated overflow, whether a live event was paused)."""
    counter = kp.counter
    paused = False
    ev = kp.perf_event
    if ev is not None and not kp.is_paused:
        counter += api.pause(ev, charge=charge)
        paused = True
    prev = counter & kp.mask
    counter += kp.emulated_counter
    kp.counter = counter & kp.mask
    kp.emulated_counter = 0
    kp.is_paused = True
    return kp.counter < prev, paused


def pmc_release_perf_event(kp: KvmPmc, api: KvmPerfCalls) -> None:
    """`pmc_release_perf_event`: release and forget the config (so it is never reused)."""
    if kp.perf_event is not None:
        ev = kp.perf_event
        kp.perf_event = None
        kp.current_config = 0
        kp.ever_active = False
        api.release(ev)


def pmc_stop_counter(kp: KvmPmc, api: KvmPerfCalls) -> None:
    """`pmc_stop_counter`: fold the value into the base, release the event."""
    if kp.perf_event is not None:
        kp.counter = pmc_read_counter(kp)
        kp.emulated_counter = 0
        kp.is_paused = True
        pmc_release_perf_event(kp, api)


def pmc_resume_counter(kp: KvmPmc, api: KvmPerfCalls, paused_now: bool) -> bool:
    """`pmc_resume_counter`: new sample period from the (folded) counter, then enable."""
    ev = kp.perf_event
    if ev is None or ev.closed:
        return False
    if paused_now:
        api.charge_reuse()
    api.period(ev, get_sample_period(kp, kp.counter), charge=not paused_now)
    api.enable(ev, charge=not paused_now)
    kp.is_paused = False
    return True


def pmc_reprogram_counter(kpmu: KvmPmu, kp: KvmPmc, config: int, api: KvmPerfCalls) -> bool:
    """`pmc_reprogram_counter`: the perf_event_attr KVM builds for a guest counter.

    type RAW, config = selector & raw mask (fixed counters: their pseudo encoding, so perf
    may back a guest fixed counter with a host GP counter), pinned, exclude_idle,
    exclude_host (exclude_guest left 0), exclude_user/kernel from USR/OS, sample period
    until the guest counter wraps; a per-task event on the vCPU thread (cpu = -1)."""
    vcpu = kpmu.vcpu
    p = kp.pmc
    attr = PerfEventAttr(
        type="raw",
        config=config & raw_event_mask(vcpu),
        pinned=True,
        exclude_idle=True,
        exclude_host=True,
        exclude_user=not p.usr,
        exclude_kernel=not p.os,
        sample_period=get_sample_period(kp, kp.counter),
        name=f"kvm {vcpu.name} {kp.name}",
    )
    try:
        ev = api.create(attr, make_overflow_handler(kpmu, kp))
    except PerfError as e:
        kpmu.stats["create_failed"] += 1
        log.debug("kvm.create_failed", vcpu=vcpu.name, pmc=kp.name, errno=e.errno, reason=e.reason)
        return False
    kp.perf_event = ev
    kp.is_paused = False
    kp.intr = p.int_en
    kp.ever_active = False
    return True


def pmc_reuse_in_place(kpmu: KvmPmu, kp: KvmPmc, api: KvmPerfCalls) -> bool:
    """`reprogram_counter` of an allowed counter whose config is unchanged and whose event is
    live: `pmc_pause_counter`, the emulated-overflow check, `pmc_resume_counter`, with the
    perf part (perf_event_pause + perf_event_period + perf_event_enable of the same event)
    done in place by perf. False when perf declined: nothing changed, take the long way.
    The overflow is injected after the event restarted instead of between the calls: it
    touches only the guest's status and KVM_REQ_PMI, which none of the perf calls read."""
    ev = kp.perf_event
    if ev is None or ev.closed:
        return False
    wrapped = False

    def period_of(paused: int) -> int:
        # pmc_pause_counter's fold, then get_sample_period of the folded counter
        nonlocal wrapped
        counter = kp.counter + paused
        prev = counter & kp.mask
        counter += kp.emulated_counter
        kp.counter = counter & kp.mask
        kp.emulated_counter = 0
        wrapped = kp.counter < prev
        return get_sample_period(kp, kp.counter)

    if api.reprogram_in_place(ev, period_of) is None:
        return False
    kp.is_paused = False
    if wrapped:
        kvm_pmu_overflow(kpmu, kp, in_pmi=False)
    kpmu.stats["reprogram_reuse"] += 1
    return True


def reprogram_counter(kpmu: KvmPmu, kp: KvmPmc, api: KvmPerfCalls) -> bool:
    """`reprogram_counter`. Returns False when perf refused the event (retry later)."""
    vcpu = kpmu.vcpu
    p = kp.pmc
    allowed = pmc_event_is_allowed(vcpu, p)
    # A reuse charges pause + period + enable as one `perf_event_reprogram`.
    will_reuse = allowed and kp.perf_event is not None and kp.current_config == _new_config(kp)
    if will_reuse and not kp.is_paused and pmc_reuse_in_place(kpmu, kp, api):
        return True
    emulated_overflow, paused = pmc_pause_counter(kp, api, charge=not will_reuse)
    if not allowed:
        kpmu.stats["reprogram_left_paused"] += 1
        return True
    if emulated_overflow:
        kvm_pmu_overflow(kpmu, kp, in_pmi=False)
    new_config = _new_config(kp)
    if kp.current_config == new_config and pmc_resume_counter(kp, api, paused):
        kpmu.stats["reprogram_reuse"] += 1
        return True
    kpmu.stats["reprogram_recreate"] += 1
    pmc_release_perf_event(kp, api)
    kp.current_config = new_config
    return pmc_reprogram_counter(kpmu, kp, p.config, api)


def _new_config(kp: KvmPmc) -> int:
    """GP: the whole selector; fixed: its 4-bit control field."""
    return fixed_field(kp) if kp.pmc.is_fixed else kp.pmc.config


def kvm_pmu_cleanup(kpmu: KvmPmu, api: KvmPerfCalls) -> None:
    """`kvm_pmu_cleanup`: release the events of counters the guest neither wrote during the
    last time slice nor left enabled, the vendor part (vLBR), then forget `pmc_in_use`."""
    kpmu.need_cleanup = False
    idle = kpmu.all_valid_pmc_idx & ~kpmu.pmc_in_use
    for i in bits(idle):
        kp = kpmu.pmcs[i]
        if kp.perf_event is not None and not kp.pmc.local_en:
            kpmu.stats["lazy_releases"] += 1
            pmc_stop_counter(kp, api)
    for vlbr in kpmu.vlbrs.values():
        vlbr.cleanup()
    kpmu.pmc_in_use = 0


def kvm_pmu_handle_event(kpmu: KvmPmu, api: KvmPerfCalls) -> None:
    """`kvm_pmu_handle_event`: snapshot and clear the bits, reprogram each counter,
    re-set the bit of a counter perf refused (no new request), then the lazy cleanup."""
    pending = kpmu.reprogram_pmi
    kpmu.reprogram_pmi &= ~pending
    kpmu.busy = True
    try:
        for i in bits(pending):
            kp = kpmu.pmcs.get(i)
            if kp is None:
                continue
            if not reprogram_counter(kpmu, kp, api):
                kpmu.reprogram_pmi |= 1 << i
        if kpmu.need_cleanup:
            kvm_pmu_cleanup(kpmu, api)
    finally:
        kpmu.busy = False
