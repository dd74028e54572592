"""Models, CPUID, guest clamping and plugin registration."""

from __future__ import annotations

import pytest
from vpmu_core.errors import ConfigError
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.plugins.records import CpuModelSpec

import vpmu_amd_perfmon
from vpmu_amd_perfmon.cpuid import enumerate_pmu, family_signature
from vpmu_amd_perfmon.models import make_model


def test_hook_registers_three_models() -> None:
    specs: list[CpuModelSpec] = []
    vpmu_amd_perfmon.vpmu_register_cpu_models(specs.append)
    assert [s.name for s in specs] == ["amd/k8", "amd/zen2", "amd/zen4"]
    for s in specs:
        assert s.vendor == "amd" and s.description
        m = s.factory({})
        assert m.name == s.name and m.vendor == "amd" and m.cost_preset == "amd"
        assert m.freq_hz == 3_000_000_000 and m.features == {}


def test_installed_entry_point_is_discovered() -> None:
    import vpmu_core as vpmu

    cat = vpmu.catalog()
    rec = cat.plugin("amd_perfmon")
    assert rec is not None and rec.status == "loaded", rec
    assert rec.dist == "vpmu-amd-perfmon" and rec.version == "0.1.0"
    assert {"amd/k8", "amd/zen2", "amd/zen4"} <= set(cat.cpu_models)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_model("amd/zen4", {"bogus": 1})
    assert make_model("amd/zen4", {"freq_hz": 2_000_000_000}).freq_hz == 2_000_000_000


@pytest.mark.parametrize(
    ("name", "version", "n", "v2", "ext"),
    [("amd/k8", 1, 4, False, False), ("amd/zen2", 1, 6, False, True), ("amd/zen4", 2, 6, True, True)],
)
def test_caps_and_cpuid(name: str, version: int, n: int, v2: bool, ext: bool) -> None:
    m = make_model(name)
    assert (m.caps.version, m.caps.gp_counters, m.caps.fixed_counters, m.caps.gp_width) == (version, n, 0, 48)
    assert m.caps.global_regs is v2
    t = m.cpuid_table()
    _, ebx, ecx, edx = t.get(0)
    assert (ebx.to_bytes(4, "little") + edx.to_bytes(4, "little") + ecx.to_bytes(4, "little")) == b"AuthenticAMD"
    e = enumerate_pmu(t.get)
    assert (e.n_counters, e.ext_core, e.perfmon_v2) == (n, ext, v2)
    assert e.family == m.data.family
    assert bool(t.get(0x80000001)[2] & (1 << 23)) is ext
    assert bool(t.get(0x80000022)[0] & 1) is v2


def test_family_signature() -> None:
    assert family_signature(0x19, 0x11, 1) == 0x00A10F11
    assert family_signature(0x17, 0x31, 0) == 0x00830F10
    assert family_signature(0x0F, 0x4B, 2) == 0x00040FB2


@pytest.mark.parametrize(
    ("name", "req", "want"),
    [
        ("amd/zen4", GuestPmuConfig(), (2, 6)),
        ("amd/zen4", GuestPmuConfig(gp_counters=3), (2, 3)),
        ("amd/zen4", GuestPmuConfig(gp_counters=20, version=5), (2, 6)),
        ("amd/zen4", GuestPmuConfig(version=1), (1, 6)),
        ("amd/zen4", GuestPmuConfig(version=1, gp_counters=5), (1, 4)),
        ("amd/zen4", GuestPmuConfig(version=0), (0, 0)),
        ("amd/zen2", GuestPmuConfig(version=2), (1, 6)),  # no PerfMonV2 on the host
        ("amd/zen2", GuestPmuConfig(gp_counters=4), (1, 4)),
        ("amd/k8", GuestPmuConfig(gp_counters=6), (1, 4)),
    ],
)
def test_resolve_guest_clamps_like_kvm(name: str, req: GuestPmuConfig, want: tuple[int, int]) -> None:
    m = make_model(name)
    out = m.resolve_guest(req)
    assert (out.version, out.gp_counters) == want
    assert out.fixed_counters == 0 and out.full_width_writes is False and out.lbr is False
    assert m.resolve_guest(out) == out  # idempotent
    pmu = m.make_pmu(req)
    assert (pmu.version, len(pmu.gp)) == want
    e = enumerate_pmu(m.cpuid_table(req).get)
    if want[0] > 0:
        assert e.n_counters == want[1]  # the guest's CPUID enumerates what its PMU has
        assert e.perfmon_v2 == (want[0] >= 2) == pmu.perfmon_v2
        assert e.ext_core == pmu.ext_core


def test_guest_cpuid_hides_svm_and_sets_hypervisor_bit() -> None:
    m = make_model("amd/zen4")
    assert m.cpuid_table().get(0x80000001)[2] & (1 << 2)
    g = m.cpuid_table(GuestPmuConfig())
    assert not g.get(0x80000001)[2] & (1 << 2)
    assert g.get(1)[2] & (1 << 31)


def test_disabled_vpmu_has_no_msrs() -> None:
    pmu = make_model("amd/zen4").make_pmu(GuestPmuConfig(version=0))
    # only IA32_DEBUGCTL, which every SVM guest has (svm_get_msr), PMU or not
    assert pmu.msr_indexes == [0x1D9] and pmu.gp == []
