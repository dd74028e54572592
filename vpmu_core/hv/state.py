"""The vCPU migration state (`vcpu.save_state()` / `vcpu.restore_state()`), schema version 1.

Plain JSON-safe data: only dicts with string keys, lists, strings, bools and integers, so
`json.loads(json.dumps(state))` is the same state. Documented in docs/migration-state.md.

```
{
  "schema": "vpmu.vcpu_state", "version": 1,
  "vendor": "intel",                 # the guest PMU's vendor register semantics
  "cpu": "intel/icelake",            # the CPU model it was saved on (informational)
  "mode": "emulated",                # the mode it was saved under (informational)
  "cpl": 0, "cr4_pce": false,
  "lapic_lvtpc": 65536,              # x2APIC LVTPC (MSR 0x834)
  "pmu": {"0x186": 4391104, ...},    # every PMU state MSR (KVM_GET_MSRS), hex index -> value
  "facilities": {"lbr": {...}},      # each facility's own snapshot (its plugin's format)
  "mode_state": {}                   # the mode's own data (a mode hook may fill it)
}
```

Restore is all or nothing and refuses (`StateError`) anything it does not understand: another
schema or version, an unknown field, a register index this vCPU does not have or a register
this vCPU has that the state lacks (a guest PMU configured differently), a value that is not
an unsigned 64-bit integer, another vendor, a facility set that differs, a value the vendor
model refuses even as a host-initiated write. It never drops a part of the state.
Cross-mode restores are exact: the state is the architectural (guest-visible) register
state, which every mode rebuilds its backing from (emulated: KVM_REQ_PMU reprograms every
counter at the next VM-entry; mediated: the registers are pushed into the loaded context).
"""

from __future__ import annotations

import re
from typing import Any

from vpmu_core.errors import StateError

STATE_SCHEMA = "vpmu.vcpu_state"
STATE_VERSION = 1
#: every top-level field of a version-1 state
FIELDS = (
    "schema",
    "version",
    "vendor",
    "cpu",
    "mode",
    "cpl",
    "cr4_pce",
    "lapic_lvtpc",
    "pmu",
    "facilities",
    "mode_state",
)
_HEX = re.compile(r"0x[0-9a-f]+")
U64 = (1 << 64) - 1


def msr_key(msr: int) -> str:
    """The state's spelling of an MSR index: lower-case hex with 0x (e.g. "0x186")."""
    return f"{msr:#x}"


def _int(field: str, value: Any, limit: int = U64) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise StateError(field, f"must be an integer in 0..{limit:#x}, got {value!r}")
    return value


def parse(state: Any, *, vendor: str, msrs: list[int], facilities: list[str]) -> dict[str, Any]:
    """Check a state against the target vCPU (its vendor, PMU state MSRs and facilities)
    and return it decoded: `pmu` as {int msr: value}. Raises StateError; changes nothing."""
    if not isinstance(state, dict):
        raise StateError("state", f"must be a mapping (a saved vcpu state), got {type(state).__name__}")
    if state.get("schema") != STATE_SCHEMA:
        raise StateError("state.schema", f"not a vpmu vCPU state: {state.get('schema')!r}", STATE_SCHEMA)
    if state.get("version") != STATE_VERSION:
        raise StateError("state.version", f"unsupported version {state.get('version')!r}", STATE_VERSION)
    unknown = sorted(str(k) for k in state if k not in FIELDS)
    if unknown:
        raise StateError(f"state.{unknown[0]}", "unknown field", ", ".join(FIELDS))
    missing = [k for k in FIELDS if k not in state]
    if missing:
        raise StateError(f"state.{missing[0]}", "missing")
    if state["vendor"] != vendor:
        raise StateError("state.vendor", f"saved from a {state['vendor']!r} guest PMU, this vCPU's is", vendor)
    if state["cpl"] not in (0, 3) or isinstance(state["cpl"], bool):
        raise StateError("state.cpl", f"must be 0 or 3, got {state['cpl']!r}", "0, 3")
    if not isinstance(state["cr4_pce"], bool):
        raise StateError("state.cr4_pce", f"must be a boolean, got {state['cr4_pce']!r}")
    _int("state.lapic_lvtpc", state["lapic_lvtpc"], 0xFFFF_FFFF)
    if not isinstance(state["mode_state"], dict):
        raise StateError("state.mode_state", "must be a mapping")
    pmu = state["pmu"]
    if not isinstance(pmu, dict):
        raise StateError("state.pmu", "must be a mapping of MSR index (hex string) to value")
    have = set(msrs)
    regs: dict[int, int] = {}
    for key, value in pmu.items():
        if not isinstance(key, str) or not _HEX.fullmatch(key):
            raise StateError(f"state.pmu.{key}", "MSR indexes are lower-case hex strings like '0x186'")
        msr = int(key, 16)
        if msr not in have:
            raise StateError(f"state.pmu.{key}", "this vCPU's guest PMU has no such register (configured differently?)")
        regs[msr] = _int(f"state.pmu.{key}", value)
    lacking = [m for m in msrs if m not in regs]
    if lacking:
        shown = ", ".join(msr_key(m) for m in lacking[:6])
        raise StateError("state.pmu", f"lacks registers this vCPU has ({shown}): saved from another guest PMU")
    facs = state["facilities"]
    if not isinstance(facs, dict) or not all(isinstance(v, dict) for v in facs.values()):
        raise StateError("state.facilities", "must map facility names to their states")
    if sorted(facs) != sorted(facilities):
        raise StateError(
            "state.facilities",
            f"saved with {sorted(facs) or 'none'}, this vCPU has {sorted(facilities) or 'none'}",
        )
    return {**state, "pmu": regs}
