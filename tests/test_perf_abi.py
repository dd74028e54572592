"""The perf ABI is decoded once, in the core (issue 13 §3): `type="hardware"` with a
PERF_COUNT_HW_* number means the same generic event on every vendor, as x86_setup_perfctr()
(arch/x86/events/core.c) makes it: `config >= x86_pmu.max_events` (PERF_COUNT_HW_MAX) is
-EINVAL, then the vendor's `event_map()` gives the encoding, 0 (no encoding) being -ENOENT."""

from __future__ import annotations

import errno

import pytest

import vpmu_core as vpmu
from vpmu_core.errors import PerfError
from vpmu_core.perf.attr import PERF_COUNT_HW_MAX, PERF_HW_IDS

#: the generic events each family has no encoding for (intel_perfmon_event_map has no
#: stalled-cycles entries on these models; amd_*perfmon_event_map no bus-cycles/ref-cycles)
MISSING = {
    "intel/skylake": {"stalled-cycles-frontend", "stalled-cycles-backend"},
    "intel/icelake": {"stalled-cycles-frontend", "stalled-cycles-backend"},
    "amd/zen4": {"bus-cycles", "ref-cycles"},
    "amd/k8": {"bus-cycles", "ref-cycles"},
}


def _open(cpu: str, config: str | int) -> tuple[int, object] | int:
    """Open on host CPU 0: (encoding, kind) of the event, or the errno."""
    host = vpmu.compose(cpu=cpu, mode="emulated", cpus=1, seed=0)
    try:
        ev = host.perf_event_open(vpmu.PerfEventAttr(type="hardware", config=config), pid=-1, cpu=0)
    except PerfError as e:
        return e.errno
    return ev.hw.config, ev.hw.kind


def test_numbering_is_the_uapi_enum() -> None:
    """include/uapi/linux/perf_event.h enum perf_hw_id."""
    assert PERF_COUNT_HW_MAX == 10
    assert PERF_HW_IDS.index("cycles") == 0 and PERF_HW_IDS.index("instructions") == 1
    assert PERF_HW_IDS.index("branches") == 4 and PERF_HW_IDS.index("bus-cycles") == 6
    assert PERF_HW_IDS.index("stalled-cycles-frontend") == 7 and PERF_HW_IDS.index("ref-cycles") == 9


@pytest.mark.parametrize("cpu", sorted(MISSING))
@pytest.mark.parametrize("n", range(PERF_COUNT_HW_MAX))
def test_number_and_name_are_the_same_event(n: int, cpu: str) -> None:
    """The integer config and its generic name give the same encoding, or the same ENOENT
    for an event the vendor's map lacks, on Intel and on AMD alike."""
    name = PERF_HW_IDS[n]
    by_number, by_name = _open(cpu, n), _open(cpu, name)
    assert by_number == by_name, (cpu, n, name)
    if name in MISSING[cpu]:
        assert by_name == errno.ENOENT
    else:
        assert isinstance(by_name, tuple), (cpu, name, by_name)


@pytest.mark.parametrize("cpu", sorted(MISSING))
@pytest.mark.parametrize("config", [PERF_COUNT_HW_MAX, 11, 1 << 32, (1 << 64) - 1, -1, "no-such-event"])
def test_out_of_range_config_is_einval(config: int | str, cpu: str) -> None:
    """attr->config >= x86_pmu.max_events: -EINVAL, on every vendor (a name that stands for
    no PERF_COUNT_HW_* number is the same case)."""
    assert _open(cpu, config) == errno.EINVAL


@pytest.mark.parametrize("cpu", ["intel/skylake", "amd/zen4"])
def test_guest_perf_decodes_the_same(cpu: str) -> None:
    """The guest's perf core is the same core: config=1 counts instructions in a guest too."""
    host = vpmu.compose(cpu=cpu, mode="emulated", cpus=1, seed=0)
    vm = host.create_vm(vcpus=1, pin=[0])
    a = vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(type="hardware", config=1), cpu=0)
    b = vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(type="hardware", config="instructions"), cpu=0)
    assert a.hw.config == b.hw.config and a.attr.config == "instructions"
