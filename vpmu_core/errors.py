"""Errors of the three audiences: the guest (faults), the host perf API (errno), the user (config)."""

from __future__ import annotations

import errno as _errno

GP_VECTOR = 13  # #GP, SDM Vol. 3A 6.15 "Interrupt 13 - General Protection Exception"
UD_VECTOR = 6


class GuestFault(Exception):
    """A fault the (virtual) hardware delivers to the guest, e.g. #GP on a reserved bit.

    Raised by `vcpu.wrmsr/rdmsr/rdpmc` exactly where hardware or KVM injects the fault.
    The instruction does not retire and has no side effect (SDM: faults are taken before retirement).
    """

    def __init__(self, vector: int = GP_VECTOR, reason: str = "") -> None:
        super().__init__(f"guest fault vector={vector} {reason}".strip())
        self.vector = vector
        self.reason = reason


def gp(reason: str = "") -> GuestFault:
    """Build a #GP(0) fault with a reason (for logs and test messages)."""
    return GuestFault(GP_VECTOR, reason)


#: the names the kernel's perf code and the docs use where Linux aliases two errno values
#: (ENOTSUP == EOPNOTSUPP == 95 and EWOULDBLOCK == EAGAIN; `errno.errorcode` keeps the last alias)
_ERRNO_NAMES = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN"}


def errno_name(err: int) -> str:
    """`errno_name(95)` -> 'EOPNOTSUPP' (the name perf returns and docs/cli.md uses)."""
    return _ERRNO_NAMES.get(err) or _errno.errorcode.get(err, str(err))


class PerfError(OSError):
    """An error returned by the host (or guest) perf API or a KVM ioctl, with `.errno` like
    the syscall."""

    def __init__(self, err: int, reason: str = "") -> None:
        super().__init__(err, f"{errno_name(err)}: {reason}")
        self.reason = reason


def allowed_text(allowed: object) -> str:
    """One spelling for the allowed values in every message: `none` for an empty set (never
    `(none)`), YAML booleans (`false`, not Python's `False`), lists comma-separated."""
    if isinstance(allowed, bool):
        return "true" if allowed else "false"
    if isinstance(allowed, (list, tuple, set, frozenset)):
        items = sorted(map(str, allowed)) if isinstance(allowed, (set, frozenset)) else [str(a) for a in allowed]
        return ", ".join(items) or "none"
    text = str(allowed).strip()
    return "none" if text in ("", "(none)", "None", "()", "[]") else text


class ConfigError(ValueError):
    """Bad user input (scenario file, option, plugin name): one message naming field and allowed values."""

    def __init__(self, field: str, message: str, allowed: object | None = None) -> None:
        text = f"{field}: {message}"
        if allowed is not None:
            text += f" (allowed: {allowed_text(allowed)})"
        super().__init__(text)
        self.field = field
        self.allowed = allowed


class VmDestroyedError(PerfError):
    """A guest-facing call on a vCPU (or VM) whose VM was destroyed (`vm.destroy()`).

    KVM refuses every vCPU ioctl of a VM that is dead with EIO (virt/kvm/kvm_main.c
    `kvm_vcpu_ioctl`: ``if (vcpu->kvm->mm != current->mm || vcpu->kvm->vm_dead) return -EIO``);
    the model raises at once instead of running anything (`.errno == errno.EIO`).
    """

    def __init__(self, what: str) -> None:
        super().__init__(_errno.EIO, f"{what}: the VM was destroyed")


class StateError(ConfigError):
    """`vcpu.restore_state()` refused a migration state it does not understand or cannot load
    exactly (unknown schema or version, unknown or missing register, a facility or guest PMU
    this vCPU does not have). Nothing of the state is applied. `.field` names the part of the
    state, as `state.pmu.0x186`. A `ConfigError`, hence a `ValueError`."""
