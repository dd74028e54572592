"""The core conformance kit with the LBR facilities attached and recording.

A facility plugin is neither a vendor nor a mode, so neither kit class applies as is. The
mode kit is run on the toy `reference` mode (the ideal vPMU) with intel_arch's models and
this plugin's facility attached, its LBR switched on in every guest and on every host CPU:
guest counts must still equal ground truth, nothing leaks, runs are deterministic. Also
the entry point of this plugin is checked (the kit's packaging checks are vendor-only).
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Any, ClassVar

import vpmu_intel_arch
import vpmu_intel_archlbr
from lbr_helpers import ARCH_CPU, CTL_ALL, DEBUGCTL, LBR_CTL

from vpmu_core.host import compose
from vpmu_core.markers import ENTRY_POINT_GROUP
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.testing import toy
from vpmu_core.testing.conformance import ModeConformance


class _WithLbr(ModeConformance):
    plugin_name = "toy"
    plugin_module = toy
    mode_name = "reference"
    vendor_modules = (("intel_arch", vpmu_intel_arch), ("intel_archlbr", vpmu_intel_archlbr))
    facility: ClassVar[str] = ""
    enable: ClassVar[tuple[int, int]] = (0, 0)

    def _compose(self, plugins: list[tuple[str, Any]], cpu: str, seed: int = 0) -> Any:
        host = compose(cpu=cpu, mode=self.mode_name, facilities=(self.facility,), plugins=plugins, seed=seed)
        msr, value = self.enable
        for c in host.cpus:
            c.facilities[self.facility].wrmsr(msr, value)
        create_vm = host.create_vm

        def create_vm_with_lbr_on(*a: Any, **kw: Any) -> Any:
            vm = create_vm(*a, **kw)
            for v in vm.vcpus:
                v.facilities[self.facility].wrmsr(msr, value)  # host-initiated (KVM_SET_MSRS)
            return vm

        host.create_vm = create_vm_with_lbr_on
        return host


class TestReferenceWithLegacyLbr(_WithLbr):
    facility = "lbr"
    enable = (DEBUGCTL, 1)
    models = ("intel/icelake", "intel/skylake")


class TestReferenceWithArchLbr(_WithLbr):
    facility = "arch_lbr"
    enable = (LBR_CTL, CTL_ALL)
    models = (ARCH_CPU,)


def test_entry_point_loads_and_registers_both_facilities() -> None:
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "intel_archlbr"]
    assert eps and eps[0].dist is not None and eps[0].dist.name == "vpmu-intel-archlbr"
    mod = eps[0].load()
    cat = build_catalog([("intel_arch", vpmu_intel_arch), ("intel_archlbr", mod)], [])
    assert {"lbr", "arch_lbr"} <= set(cat.facilities)
    rec = cat.plugin("intel_archlbr")
    assert rec is not None and rec.status == "loaded" and "vpmu_register_facilities" in rec.hooks
    assert not cat.conflicts
    models = {n: s.factory({}) for n, s in cat.cpu_models.items()}
    applies = {f: sorted(n for n, m in models.items() if cat.facilities[f].applies_to(m)) for f in ("lbr", "arch_lbr")}
    assert applies == {"lbr": ["intel/icelake", "intel/skylake"], "arch_lbr": [ARCH_CPU]}


def test_guest_lbr_records_during_the_kit_workload() -> None:
    """The kit's runs above really record (not a kit test: a check that the setup is live)."""
    from vpmu_core import Work

    t = TestReferenceWithArchLbr()
    host = t._compose([("toy", toy), *t.vendor_modules], ARCH_CPU)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    v.execute(Work(instructions=1_000_000, branches=100_000))
    st = v.facilities["arch_lbr"]
    assert st.active and all(e[0] for e in st.ring.slots)
