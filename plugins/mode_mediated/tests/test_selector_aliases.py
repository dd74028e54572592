"""Selector aliases under mediation: with PerfCtrExtCore (zen2, zen4) the K7 EVNTSEL0-3 alias
PERF_CTL0-3 (AMD APM Vol. 2 13.2; KVM `get_gp_pmc_amd`). The mediated mode needs PerfMonV2,
so this runs on amd/zen4; the kit's test_every_selector_alias_programs_its_counter checks
every mode on zen2 as well. The intercept map takes every alias from the vendor's
`eventsel_msrs` (no more probing the guest's registers with a marker write)."""

from __future__ import annotations

from typing import Any

import pytest
from vpmu_core import PerfEventAttr, Work

BRANCHES = 70_001


def _counts_through_each_selector_msr(host: Any, exits: Any) -> dict[int, int]:
    """selector MSR -> what its counter counted when programmed through that MSR alone."""
    v = host.create_vm(vcpus=1, pin=[0], exits=exits(rate=0)).vcpus[0]
    driver = host.model.make_driver()
    hw = driver.hw_event(PerfEventAttr(config="branches"), v)
    out = {}
    for pmc in v.pmu.gp:
        sels, ctr = v.pmu.eventsel_msrs(pmc), v.pmu.counter_msrs(pmc)[0]
        for msr in sels:
            driver.start(v, hw, pmc.idx, 0)
            sel = v.rdmsr(sels[0])
            v.wrmsr(sels[0], 0)
            v.wrmsr(ctr, 0)
            v.wrmsr(msr, sel)
            v.execute(Work(instructions=500_000, branches=BRANCHES))
            v.wrmsr(msr, 0)
            out[msr] = v.rdmsr(ctr)
            driver.stop(v, hw, pmc.idx)
    return out


@pytest.mark.parametrize("switch_at", ("run_loop", "exit"))
def test_k7_alias_selectors_count_exactly_on_zen4(switch_at, host_factory, exits) -> None:
    counts = _counts_through_each_selector_msr(host_factory("amd/zen4", switch_at=switch_at), exits)
    k7 = [m for m in counts if 0xC001_0000 <= m <= 0xC001_0003]
    assert len(k7) == 4, "zen4's default guest has the K7 aliases of counters 0-3"
    assert counts == dict.fromkeys(counts, BRANCHES)


def test_intercept_map_names_every_selector_alias(host_factory) -> None:
    host = host_factory("amd/zen4")
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    st = v.mode_state
    for pmc in v.pmu.gp:
        for msr in v.pmu.eventsel_msrs(pmc):
            assert st.selector_msrs[msr] == pmc.idx, hex(msr)
            assert msr not in st.passthrough, f"{msr:#x}: a selector must stay intercepted (filtering)"
    assert sorted(st.selector_msrs) == sorted(m for p in v.pmu.gp for m in v.pmu.eventsel_msrs(p))
