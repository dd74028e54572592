"""Resolve hypervisor hook implementations once per composition (hot paths call them
directly: a pluggy call costs ~20x a direct one, pitfall P18).

The order is pluggy's: last registered first, `tryfirst`/`trylast` honoured. compose()
registers the mode first and the facilities after it, so a facility's implementation runs
before the mode's. Wrappers (`wrapper=True`, `hookwrapper=True`) are refused: resolved hooks
are plain calls, and a wrapper's generator would become the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from vpmu_core import hookspecs
from vpmu_core.errors import ConfigError

HYPERVISOR_HOOKS = tuple(
    name
    for name in dir(hookspecs)
    if name.startswith("vpmu_") and name not in hookspecs.REGISTRATION_HOOKS and callable(getattr(hookspecs, name))
)


def _adapt(impl: Any, spec_args: tuple[str, ...]) -> Callable[..., Any]:
    fn = impl.function
    if tuple(impl.argnames) == spec_args:
        return fn
    wanted = tuple(impl.argnames)

    def call(**kw: Any) -> Any:
        return fn(**{k: kw[k] for k in wanted})

    return call


def _none(**kw: Any) -> None:
    return None


class ResolvedHooks:
    """One attribute per hypervisor hook (without the ``vpmu_`` prefix); each a callable
    taking the spec's keyword arguments."""

    facility_allowed: Callable[..., Any]
    fast_forward_rules: Callable[..., Any]
    fast_forward_state: Callable[..., Any]
    filter_changed: Callable[..., Any]
    guest_counter_values: Callable[..., Any]
    guest_cpuid: Callable[..., Any]
    guest_rdmsr: Callable[..., Any]
    guest_rdpmc: Callable[..., Any]
    guest_wrmsr: Callable[..., Any]
    guest_xrstors: Callable[..., Any]
    guest_xsaves: Callable[..., Any]
    host_created: Callable[..., Any]
    host_perf_event_open: Callable[..., Any]
    host_pmi: Callable[..., Any]
    instruction_retired: Callable[..., Any]
    limit_guest_pmu: Callable[..., Any]
    mode_report: Callable[..., Any]
    msr_intercepted: Callable[..., Any]
    rdpmc_intercepted: Callable[..., Any]
    run_loop_enter: Callable[..., Any]
    run_loop_leave: Callable[..., Any]
    vcpu_create: Callable[..., Any]
    vcpu_load: Callable[..., Any]
    vcpu_put: Callable[..., Any]
    vcpu_restore_state: Callable[..., Any]
    vcpu_run_enter: Callable[..., Any]
    vcpu_run_leave: Callable[..., Any]
    vcpu_save_state: Callable[..., Any]
    vm_create: Callable[..., Any]
    vm_destroy: Callable[..., Any]
    vm_entry: Callable[..., Any]
    vm_exit: Callable[..., Any]

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.implemented: dict[str, list[str]] = {}
        for name in HYPERVISOR_HOOKS:
            caller = getattr(pm.hook, name)
            spec_args = tuple(caller.spec.argnames) if caller.spec else ()
            impls = caller.get_hookimpls()  # pluggy order: last registered first
            for i in impls:
                if i.hookwrapper or getattr(i, "wrapper", False):
                    raise ConfigError(
                        "plugin",
                        f"{i.plugin_name}: {name} is a wrapper; hypervisor hooks are resolved to plain calls "
                        "(use a plain @hookimpl, tryfirst/trylast for order)",
                    )
            fns = [_adapt(i, spec_args) for i in reversed(impls)]  # pluggy call order (LIFO)
            self.implemented[name] = [i.plugin_name for i in impls]
            firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
            setattr(self, name[len("vpmu_") :], _combine(fns, firstresult))

    def has(self, name: str) -> bool:
        return bool(self.implemented.get(name))


def _combine(fns: list[Callable[..., Any]], firstresult: bool) -> Callable[..., Any]:
    if not fns:
        return _none
    if len(fns) == 1:
        return fns[0]
    if firstresult:

        def first(**kw: Any) -> Any:
            for f in fns:
                r = f(**kw)
                if r is not None:
                    return r
            return None

        return first

    def each(**kw: Any) -> None:
        for f in fns:
            f(**kw)

    return each
