"""Model registration, guest resolution (KVM clamping) and CPUID."""

from __future__ import annotations

import pytest
import vpmu_intel_arch
from vpmu_intel_arch.models import IntelCpuModel, make_skylake

from vpmu_core.errors import ConfigError
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.cpuid import EAX, ECX, EDX
from vpmu_core.plugins.records import CpuModelSpec

EXPECTED = {
    "intel/skylake": (4, 4, 3, False),
    "intel/icelake": (5, 8, 4, True),
    "intel/sapphirerapids": (5, 8, 4, True),
    "intel/gracemont": (5, 6, 3, False),
}


def test_registration_hook_registers_every_model() -> None:
    specs: list[CpuModelSpec] = []
    vpmu_intel_arch.vpmu_register_cpu_models(register=specs.append)
    assert sorted(s.name for s in specs) == sorted(EXPECTED)
    for s in specs:
        m = s.factory({})
        assert m.name == s.name and m.vendor == s.vendor == "intel"
    assert "smt" in next(s for s in specs if s.name == "intel/skylake").options


def test_catalog_discovers_the_plugin() -> None:
    from vpmu_core.plugins.discovery import catalog

    cat = catalog()
    rec = cat.plugin("intel_arch")
    assert rec is not None and rec.status == "loaded" and rec.dist is not None
    assert set(EXPECTED) <= set(cat.cpu_models)


def test_model_shape(model: IntelCpuModel) -> None:
    version, gp, fixed, metrics = EXPECTED[model.name]
    c = model.caps
    assert (c.version, c.gp_counters, c.fixed_counters, model.data.perf_metrics) == (version, gp, fixed, metrics)
    assert c.gp_width == c.fixed_width == 48 and c.full_width_writes and c.global_regs
    assert c.lbr == (model.name != "intel/gracemont"), "LBR data is modelled for the P-cores only"
    assert model.freq_hz == 3_000_000_000 and model.cost_preset == "intel"
    assert ("arch_lbr" in model.features) == (model.name == "intel/sapphirerapids")
    if "lbr" in model.features:
        assert model.features["lbr"]["depth"] == 32
    assert model.describe()["name"] == model.name


def test_cpuid_leaf_a_matches_caps(model: IntelCpuModel) -> None:
    t = model.cpuid_table()
    eax, ebx, ecx, edx = t.get(0xA)
    c = model.caps
    assert (eax & 0xFF, eax >> 8 & 0xFF, eax >> 16 & 0xFF) == (c.version, c.gp_counters, c.gp_width)
    assert eax >> 24 == model.data.arch_events_len and ebx == 0
    assert (edx & 0x1F, edx >> 5 & 0xFF) == (c.fixed_counters, c.fixed_width)
    if c.version >= 5:
        assert ecx == (1 << c.fixed_counters) - 1 and edx & (1 << 15)  # AnyThread deprecated
    assert t.get(0)[1:] == (0x756E6547, 0x6C65746E, 0x49656E69)  # GenuineIntel
    assert t.get(1)[ECX] & (1 << 15)  # PDCM
    assert bool(t.get(7, 0)[EDX] & (1 << 19)) == ("arch_lbr" in model.features)


def test_arch_lbr_cpuid_leaves() -> None:
    from vpmu_intel_arch.models import make_sapphirerapids

    t = make_sapphirerapids({}).cpuid_table()
    assert t.get(0x1C)[EAX] == 0b1111  # depths 8, 16, 24, 32
    assert t.get(0xD, 1)[ECX] & (1 << 15)
    assert t.get(0xD, 15)[EAX] == 0x28 + 24 * 32


def test_guest_cpuid_follows_config(model: IntelCpuModel) -> None:
    cfg = GuestPmuConfig(version=2, gp_counters=2, fixed_counters=1)
    eax, _, ecx, edx = model.cpuid_table(cfg).get(0xA)
    assert (eax & 0xFF, eax >> 8 & 0xFF, edx & 0x1F, ecx) == (2, 2, 1, 0)
    assert model.cpuid_table(cfg).get(1)[ECX] & (1 << 31)  # hypervisor bit


def test_resolve_fills_and_clamps(model: IntelCpuModel) -> None:
    full = model.resolve_guest(GuestPmuConfig())
    c = model.caps
    assert (full.version, full.gp_counters, full.fixed_counters, full.full_width_writes, full.lbr) == (
        c.version,
        c.gp_counters,
        c.fixed_counters,
        True,
        c.lbr,
    )
    big = model.resolve_guest(GuestPmuConfig(version=9, gp_counters=31, fixed_counters=9))
    assert (big.version, big.gp_counters, big.fixed_counters) == (c.version, c.gp_counters, c.fixed_counters)
    v1 = model.resolve_guest(GuestPmuConfig(version=1))
    assert (v1.version, v1.fixed_counters) == (1, 0)
    v0 = model.resolve_guest(GuestPmuConfig(version=0))
    assert (v0.gp_counters, v0.fixed_counters, v0.full_width_writes, v0.lbr) == (0, 0, False, False)


def test_resolve_rejects_nonsense(model: IntelCpuModel) -> None:
    with pytest.raises(ConfigError):
        model.resolve_guest(GuestPmuConfig(version=0, gp_counters=2))
    with pytest.raises(ConfigError):
        model.resolve_guest(GuestPmuConfig(version=1, fixed_counters=2))


def test_model_options_validated() -> None:
    with pytest.raises(ConfigError):
        make_skylake({"smt": "maybe"})
    with pytest.raises(ConfigError):
        make_skylake({"bogus": 1})
    assert make_skylake({"smt": False}).caps.gp_counters == 8


def test_events_hidden_by_guest_cpuid_still_count() -> None:
    """KVM selftest pmu_counters_test: CPUID.0AH:EBX hides an event; KVM does not enforce it."""
    import vpmu_intel_arch

    import vpmu_core as vpmu
    from vpmu_core.testing import toy

    host = vpmu.compose(cpu="intel/icelake", mode="reference", plugins=[("intel_arch", vpmu_intel_arch), ("toy", toy)])
    hide_branches = 1 << 5  # EBX bit 5: branch instructions retired
    v = host.create_vm(pmu=vpmu.GuestPmuConfig(unavailable_events=hide_branches), pin=[0]).vcpus[0]
    assert v.cpuid(0xA, 0)[1] == hide_branches
    v.wrmsr(0x38F, 0)
    v.wrmsr(0x186, 0x4300C4)  # branches, USR|OS|EN
    v.wrmsr(0x38F, 1)
    v.execute(vpmu.Work(instructions=10_000, branches=1_234))
    v.wrmsr(0x38F, 0)
    assert v.rdmsr(0xC1) == 1_234


def test_gracemont_is_an_atom_without_topdown_slots() -> None:
    """intel/gracemont (Linux INTEL_ATOM_GRACEMONT): v5, 6 GP + 3 fixed at 48 bits, full-width
    writes, 7 architectural events (no Topdown Slots), no perf metrics, AnyThread deprecated,
    only the fixed counters constrained (intel_grt_event_constraints)."""
    from vpmu_intel_arch.gracemont import GRT_CONSTRAINTS, make_gracemont

    m = make_gracemont({})
    eax, _, ecx, edx = m.cpuid_table().get(0xA)
    assert (eax & 0xFF, eax >> 8 & 0xFF, eax >> 16 & 0xFF, eax >> 24) == (5, 6, 48, 7)
    assert (edx & 0x1F, edx >> 5 & 0xFF, ecx, bool(edx & 1 << 15)) == (3, 48, 0b111, True)
    pmu = m.make_pmu(None)
    assert pmu.has_msr(0x4C1 + 5) and not pmu.has_msr(0x4C1 + 6) and not pmu.has_msr(0x329)
    assert pmu.rdmsr(0x345) & (1 << 13) and not pmu.rdmsr(0x345) & (1 << 15)
    assert all(c.idxmsk >> 32 for c in GRT_CONSTRAINTS)
    with pytest.raises(ConfigError):
        make_gracemont({"smt": False})
