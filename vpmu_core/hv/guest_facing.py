"""The vCPU's guest-facing API boundary (DESIGN §5): a call on a destroyed VM fails at once.

A leaf of hv/: the run loop (hv/run_loop.py), the instruction emulation (hv/emulate.py) and
the vCPU object (hv/vcpu.py) all mark guest-facing methods with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from vpmu_core.errors import VmDestroyedError

if TYPE_CHECKING:
    from vpmu_core.hv.vm import VM


class _OfAVm(Protocol):
    vm: VM
    name: str


_S = TypeVar("_S", bound=_OfAVm)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def guest_facing(fn: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """A call of the vCPU's guest-facing API (DESIGN §5): on a destroyed VM it raises
    `VmDestroyedError` at once, before anything runs (kvm_vcpu_ioctl: -EIO once
    `kvm->vm_dead`), instead of waiting for a task that is on no run queue."""

    @functools.wraps(fn)
    def call(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self.vm.destroyed:
            raise VmDestroyedError(f"{self.name}.{fn.__name__}()")
        return fn(self, *args, **kwargs)

    return call
