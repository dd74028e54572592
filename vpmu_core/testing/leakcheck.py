"""The core's own leak check: what the physical PMU holds at every vCPU put and load,
whatever the mode says about itself (no pytest needed).

A mode's own leak checks (`host.leaks`) only see what the mode thinks it did. This checker
looks at the hardware model directly, from the points every mode goes through:

* after a vCPU is scheduled out (its `vcpu_put` and host perf's sched switch have run):
  every physical counter that counts host-mode work belongs to an active host perf event
  on that CPU (a guest selector left enabled counts the host), and no counter that host
  perf does not own holds a value the kit planted in that guest;
* at every VM-entry (after the mode's `vpmu_vm_entry`): no physical counter holds a value
  planted in another vCPU, and every counter that counts guest-mode work belongs to an
  active host perf event or is one of this guest's own counters.

Planted values are distinctive counter values the kit writes into guest counters whose
selectors stay disabled, so they never change (`plant`).
"""

from __future__ import annotations

from typing import Any


class LeakChecker:
    """Install on a composed host before creating VMs: ``checker = LeakChecker(host)``."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.checks = 0
        self.leaks: list[str] = []
        #: vCPU name -> {guest pmc idx: planted value}
        self.planted: dict[str, dict[int, int]] = {}
        perf = host.perf
        sched_task = perf.sched_task

        def sched_task_then_check(cpu: int, prev: Any, nxt: Any) -> None:
            sched_task(cpu, prev, nxt)
            if prev is not None and getattr(prev, "kind", "") == "vcpu" and prev is not nxt:
                self.check_put(prev.vcpu, host.cpus[cpu])

        perf.sched_task = sched_task_then_check
        hooks = host.hooks
        vm_entry = hooks.vm_entry

        def vm_entry_then_check(**kw: Any) -> Any:
            out = vm_entry(**kw)
            self.check_load(kw["vcpu"])
            return out

        hooks.vm_entry = vm_entry_then_check

    # ---- planting ---------------------------------------------------------------------------
    def plant(self, vcpu: Any, base: int, skip: set[int] | frozenset[int] = frozenset()) -> dict[int, int]:
        """Write a distinctive value into every guest counter not in `skip` (their selectors
        must stay disabled); returns {idx: value}. Values stay below 2**31 so that legacy
        32-bit counter writes keep them as they are."""
        out: dict[int, int] = {}
        for n, pmc in enumerate(vcpu.pmu.pmcs):
            if pmc.idx in skip:
                continue
            value = (base + 0x1111 * (n + 1)) & 0x7FFF_FFFF & pmc.mask
            vcpu.wrmsr(vcpu.pmu.counter_msrs(pmc)[0], value)
            out[pmc.idx] = value
        self.planted.setdefault(vcpu.name, {}).update(out)
        return out

    # ---- checks -----------------------------------------------------------------------------
    def _owned(self, cpu: Any) -> set[int]:
        return {e.idx for e in self.host.perf.ctx[cpu.index].active if e.idx is not None}

    def _record(self, bad: list[str], where: str) -> None:
        self.checks += 1
        if bad:
            self.leaks.append(f"{where}: " + "; ".join(bad))

    def check_put(self, vcpu: Any, cpu: Any) -> None:
        hw = cpu.pmu
        owned = self._owned(cpu)
        bad = [
            f"pmc{p.idx} counts host-mode work for no host perf event" for p in hw.counting(False) if p.idx not in owned
        ]
        planted = set(self.planted.get(vcpu.name, {}).values())
        for p in hw.pmcs:
            if p.idx not in owned and p.value in planted:
                bad.append(f"pmc{p.idx} still holds the guest's value {p.value:#x}")
        self._record(bad, f"after put of {vcpu.name} on cpu{cpu.index}")

    def check_load(self, vcpu: Any) -> None:
        cpu = vcpu.cpu
        hw = cpu.pmu
        owned = self._owned(cpu)
        own_idx = {p.idx for p in vcpu.pmu.pmcs}
        others = {v: n for n, vals in self.planted.items() if n != vcpu.name for v in vals.values()}
        bad = [
            f"pmc{p.idx} counts guest-mode work for neither host perf nor this guest"
            for p in hw.counting(True)
            if p.idx not in owned and p.idx not in own_idx
        ]
        for p in hw.pmcs:
            if p.value in others:
                bad.append(f"pmc{p.idx} holds {others[p.value]}'s value {p.value:#x}")
        self._record(bad, f"at VM-entry of {vcpu.name} on cpu{cpu.index}")
