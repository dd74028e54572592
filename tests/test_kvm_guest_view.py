"""What a guest sees under KVM 7.0, in both modes, on every model a rule applies to (issue 11).

Cross-plugin: the vendor plugins give the registers, the modes KVM's policy; each test names
the kernel function it checks. Mediated compositions run in every placement where the
placement could matter; models the mediated vPMU refuses (no PerfMonV2, Intel < v4) only
run emulated.
"""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu

INTEL = ("intel/skylake", "intel/icelake", "intel/sapphirerapids")
AMD = ("amd/k8", "amd/zen2", "amd/zen4")
MODES = ("emulated", "mediated:run_loop", "mediated:exit", "mediated:vcpu_run")

MSR_GLOBAL_STATUS = 0x38E
MSR_GLOBAL_CTRL = 0x38F
MSR_GLOBAL_OVF_CTRL = 0x390
MSR_GLOBAL_STATUS_SET = 0x391
MSR_GLOBAL_INUSE = 0x392
CPUID_A_EDX_ANYTHREAD_DEPRECATED = 1 << 15


def vcpu_for(cpu: str, mode: str, pmu: vpmu.GuestPmuConfig | None = None, **opts: Any) -> Any:
    """One vCPU on host CPU 0, no background exits; skip what the mediated vPMU refuses."""
    name, _, placement = mode.partition(":")
    if placement:
        opts["switch_at"] = placement
    try:
        host = vpmu.compose(cpu=cpu, mode=name, cpus=1, mode_options=opts)
    except vpmu.ConfigError as e:
        pytest.skip(str(e))
    vm = host.create_vm(vcpus=1, pin=[0], pmu=pmu or vpmu.GuestPmuConfig(), exits=vpmu.ExitProfile(rate_per_s=0))
    return vm.vcpus[0]


def gp_vector(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except vpmu.GuestFault as e:
        return e.vector
    return 0


# ---- item 6: the guest PMU version KVM advertises is 2 ---------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", INTEL)
def test_default_intel_guest_is_v2_with_at_most_3_fixed(cpu: str, mode: str) -> None:
    """kvm_init_pmu_capability(): version = min(host, 2), fixed = min(host, 3); cpuid.c leaf
    0xA: ECX = 0, EDX[15] AnyThread-deprecated set."""
    v = vcpu_for(cpu, mode)
    eax, _, ecx, edx = v.cpuid(0xA, 0)
    assert eax & 0xFF == 2
    assert ecx == 0
    assert edx & CPUID_A_EDX_ANYTHREAD_DEPRECATED
    assert edx & 0x1F == 3 == len(v.pmu.fixed)
    # v2: no GLOBAL_STATUS_SET / GLOBAL_INUSE (#GP), both directions
    for msr in (MSR_GLOBAL_STATUS_SET, MSR_GLOBAL_INUSE):
        assert gp_vector(v.rdmsr, msr) == 13
        assert gp_vector(v.wrmsr, msr, 0) == 13
    # GLOBAL_OVF_CTRL bits 58-61 are reserved for v2 (KVM global_status_rsvd) where KVM
    # emulates the register; a mediated guest whose counts equal the host's (Skylake) writes
    # the v4 hardware register directly, which takes them (hardware semantics)
    passthrough = MSR_GLOBAL_OVF_CTRL in getattr(v.mode_state, "passthrough", ())
    for bit in range(58, 62):
        assert gp_vector(v.wrmsr, MSR_GLOBAL_OVF_CTRL, 1 << bit) == (0 if passthrough else 13), bit
    assert passthrough == (cpu == "intel/skylake" and mode.startswith("mediated"))
    assert gp_vector(v.wrmsr, MSR_GLOBAL_OVF_CTRL, 1) == 0


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids"))
def test_explicit_version_above_cap_is_clamped(cpu: str, mode: str) -> None:
    v = vcpu_for(cpu, mode, vpmu.GuestPmuConfig(version=5, fixed_counters=4))
    assert v.pmu.version == 2 and len(v.pmu.fixed) == 3
    assert v.cpuid(0xA, 0)[0] & 0xFF == 2


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
def test_explicit_lower_version_is_kept(mode: str) -> None:
    v = vcpu_for("intel/icelake", mode, vpmu.GuestPmuConfig(version=1))
    assert v.cpuid(0xA, 0)[0] & 0xFF == 1 and not v.pmu.fixed
    assert gp_vector(v.rdmsr, MSR_GLOBAL_CTRL) == 13


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids"))
def test_upgrade_v5_option_models_the_unmerged_series(cpu: str, mode: str) -> None:
    """Off by default; on, the guest gets the host's v5 with STATUS_SET/INUSE (still at most
    3 fixed counters: the series does not lift KVM_MAX_NR_INTEL_FIXED_COUNTERS)."""
    v = vcpu_for(cpu, mode, upgrade_v5=True)
    eax, _, ecx, _ = v.cpuid(0xA, 0)
    assert eax & 0xFF == 5 and ecx == 0b111
    v.wrmsr(MSR_GLOBAL_STATUS_SET, 1)
    assert v.rdmsr(MSR_GLOBAL_STATUS) & 1
    assert gp_vector(v.rdmsr, MSR_GLOBAL_INUSE) == 0


@pytest.mark.parametrize("mode", ("emulated", "mediated"))
def test_upgrade_v5_is_a_boolean_option(mode: str) -> None:
    with pytest.raises(vpmu.ConfigError):
        vpmu.compose(cpu="intel/icelake", mode=mode, mode_options={"upgrade_v5": "maybe"})


@pytest.mark.parametrize("mode", MODES)
def test_amd_guest_is_v2_perfmon_v2(mode: str) -> None:
    v = vcpu_for("amd/zen4", mode)
    assert v.pmu.version == 2 and len(v.pmu.gp) == 6


# ---- item 2: emulated instructions are counted after they take effect ------------------------
COUNTING = ("intel/skylake", "intel/icelake", "intel/sapphirerapids", "amd/zen4")
EVENT_INSTRUCTIONS = 0x00C0  # Intel SDM Table 20-1 / AMD PPR Retired Instructions
USR, OS, INT, EN = 1 << 16, 1 << 17, 1 << 20, 1 << 22
N = 1_000_000


class Raw:
    """A guest kernel driving counter 0 through raw MSRs (the vendor's role methods give the
    addresses: Intel PERFEVTSEL0/PMC0/GLOBAL_CTRL, AMD PERF_CTL0/PERF_CTR0/GLOBAL_CTL)."""

    def __init__(self, v: Any) -> None:
        self.v = v
        pmu = v.pmu
        self.sel = pmu.eventsel_msr(pmu.gp[0])
        self.ctr = pmu.counter_msrs(pmu.gp[0])[-1]  # Intel legacy PMCx / AMD PERF_CTRx
        self.ctrl = pmu.global_msrs()["ctrl"]
        self.status = pmu.global_msrs()["status"]
        self.mask = pmu.gp[0].mask

    def program(self, intr: bool = False) -> None:
        self.v.wrmsr(self.sel, EVENT_INSTRUCTIONS | USR | OS | EN | (INT if intr else 0))

    def enable_counting(self) -> None:
        """GLOBAL_CTRL off, the selector programmed, GLOBAL_CTRL on: the window opens."""
        self.v.wrmsr(self.ctrl, 0)
        self.program()
        self.v.wrmsr(self.ctrl, 1)

    @property
    def hw_globals(self) -> bool:
        """GLOBAL_CTRL is executed by the hardware (mediated, counts equal the host's)."""
        return self.ctrl in getattr(self.v.mode_state, "passthrough", ())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_counter_write_then_disable_reads_1001(cpu: str, mode: str) -> None:
    """enable; N work; WRMSR PMC0=1000; WRMSR GLOBAL_CTRL=0 -> 1001: the counter write
    retires after it took effect, the disabling write retires with GLOBAL_CTRL already 0
    (kvm_emulate_wrmsr -> kvm_skip_emulated_instruction -> kvm_pmu_instruction_retired).
    Where the hardware executes GLOBAL_CTRL (mediated, counts equal the host's) the
    disabling write counts under the state before it: 1002."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    g.enable_counting()
    v.execute(vpmu.Work(instructions=N))
    v.wrmsr(g.ctr, 1000)
    v.wrmsr(g.ctrl, 0)
    assert v.rdmsr(g.ctr) == (1002 if g.hw_globals else 1001)
    assert g.hw_globals == (mode != "emulated" and cpu in ("intel/skylake", "amd/zen4"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_preset_counter_wrapped_by_the_enabling_write(cpu: str, mode: str) -> None:
    """A counter preset to 2^48-1 is wrapped by the enabling WRMSR itself: the next RDMSR of
    GLOBAL_STATUS sees the overflow bit, and the counter then reads 1 (that RDMSR retired
    after its read). Hardware-executed: the enabling write counts before it took effect
    (not at all), the status RDMSR wraps the counter after reading 0, the counter reads 0."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    v.wrmsr(g.ctrl, 0)
    v.wrmsr(g.ctr, g.mask)
    g.program()
    v.wrmsr(g.ctrl, 1)
    status = v.rdmsr(g.status)
    value = v.rdmsr(g.ctr)
    if g.hw_globals:
        assert (status & 1, value) == (0, 0)
    else:
        assert (status & 1, value) == (1, 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_deny_filter_mid_window_reads_n_plus_1(cpu: str, mode: str) -> None:
    """enable; N work; deny filter for the event; N work; disable -> N + 1: the enabling
    write was counted when it retired (after), the second N and the disabling write are
    filtered (pmc_event_is_allowed at kvm_pmu_trigger_event time). Hardware-executed
    GLOBAL_CTRL: the enabling write counted before (nothing), so N."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    g.enable_counting()
    v.execute(vpmu.Work(instructions=N))
    v.vm.set_pmu_event_filter(action="deny", events=[EVENT_INSTRUCTIONS])
    v.execute(vpmu.Work(instructions=N))
    v.wrmsr(g.ctrl, 0)
    assert v.rdmsr(g.ctr) == (N if g.hw_globals else N + 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_plain_window_reads_n_plus_1(cpu: str, mode: str) -> None:
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    g.enable_counting()
    v.execute(vpmu.Work(instructions=N, branches=N // 10))
    v.wrmsr(g.ctrl, 0)
    assert v.rdmsr(g.ctr) == N + 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_faulting_instructions_do_not_retire(cpu: str, mode: str) -> None:
    """An instruction that #GPs is not skipped (KVM injects the fault), so it does not
    retire and nothing counts it: a reserved LVTPC write, a reserved selector write, an
    unknown MSR, a bad RDPMC index, a WRMSR at CPL 3, RDPMC at CPL 3 without CR4.PCE."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    v.wrmsr(g.ctrl, 0)
    g.program()
    v.wrmsr(g.ctrl, 1)  # counted when KVM emulates it (after), not when hardware runs it
    start = 0 if g.hw_globals else 1
    faults = [
        lambda: v.wrmsr(0x834, 1 << 20),  # x2APIC LVTPC reserved bit
        lambda: v.wrmsr(0xDEAD, 0),  # no such MSR
        lambda: v.rdmsr(0xDEAD),
        lambda: v.rdpmc(0x1234),  # no such counter
    ]
    if cpu.startswith("intel/"):
        faults.append(lambda: v.wrmsr(g.sel, 1 << 40))  # EVTSEL reserved bits #GP on Intel
    for f in faults:
        assert gp_vector(f) == 13
    v.cpl = 3
    assert gp_vector(v.wrmsr, g.ctr, 0) == 13
    assert gp_vector(v.rdpmc, 0) == 13
    v.cpl = 0
    assert v.rdmsr(g.ctr) == start


@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_faulting_lbr_access_does_not_retire(cpu: str) -> None:
    """Emulated vLBR: a #GP on an LBR MSR (LBR_TOS >= depth, a non-canonical FROM) is
    injected without skipping the instruction: not counted."""
    host = vpmu.compose(cpu=cpu, mode="emulated", facilities=("lbr",), cpus=1)
    v = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=0)).vcpus[0]
    g = Raw(v)
    g.enable_counting()
    assert gp_vector(v.wrmsr, 0x1C9, 99) == 13  # MSR_LBR_TOS past the depth
    assert gp_vector(v.wrmsr, 0x680, 1 << 60) == 13  # non-canonical LBR_FROM_0
    assert v.rdmsr(g.ctr) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_rdpmc_at_cpl3_needs_cr4_pce(cpu: str, mode: str) -> None:
    """kvm_pmu_rdpmc(): CPL > 0 without CR4.PCE -> #GP (checked before any exit: SDM RDPMC);
    with CR4.PCE the read works at CPL 3. WRMSR/RDMSR at CPL 3 always #GP."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    v.wrmsr(g.ctr, 77)
    v.cpl = 3
    assert gp_vector(v.rdpmc, 0) == 13
    assert gp_vector(v.rdmsr, g.ctr) == 13
    v.cr4_pce = True
    assert v.rdpmc(0) == 77
    assert gp_vector(v.wrmsr, g.ctr, 0) == 13


# ---- item 1: IA32_DEBUGCTL always exists ----------------------------------------------------
MSR_IA32_DEBUGCTL = 0x1D9
MSR_PERF_CAPABILITIES = 0x345
MSR_LBR_TOS = 0x1C9


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", INTEL)
def test_intel_debugctl_without_guest_lbr(cpu: str, mode: str) -> None:
    """vmx_is_valid_debugctl(): without a guest LBR, LBR and BTF are dropped silently (reads
    0), every other bit #GPs (nothing else is in vmx_get_supported_debugctl() here)."""
    v = vcpu_for(cpu, mode)
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0
    v.wrmsr(MSR_IA32_DEBUGCTL, 0b11)  # LBR | BTF
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0
    for bit in (2, 6, 7, 11, 12, 14):  # BUS_LOCK_DETECT, TR, BTS, FREEZE_LBRS, FREEZE_PERFMON, SMM
        assert gp_vector(v.wrmsr, MSR_IA32_DEBUGCTL, 1 << bit) == 13, bit
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0


@pytest.mark.parametrize("mode", ("emulated", "mediated:run_loop"))
def test_intel_debugctl_on_a_pmu_less_guest(mode: str) -> None:
    v = vcpu_for("intel/icelake", mode, vpmu.GuestPmuConfig(version=0))
    v.wrmsr(MSR_IA32_DEBUGCTL, 1)
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", AMD)
def test_amd_debugctl(cpu: str, mode: str) -> None:
    """svm.c: svm_get_msr() reads "lbrv ? dbgctl : 0"; svm_set_msr() without lbrv drops any
    write, with lbrv suppresses BTF, stores LBR and #GPs DEBUGCTL_RESERVED_BITS."""
    v = vcpu_for(cpu, mode)
    lbrv = cpu != "amd/k8"
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0
    v.wrmsr(MSR_IA32_DEBUGCTL, 0b11)  # LBR | BTF
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == (1 if lbrv else 0)
    assert gp_vector(v.wrmsr, MSR_IA32_DEBUGCTL, 1 << 6) == (13 if lbrv else 0)
    v.wrmsr(MSR_IA32_DEBUGCTL, 0)
    assert v.rdmsr(MSR_IA32_DEBUGCTL) == 0


# ---- item 4: PERF_CAPABILITIES[5:0] only with the LBR MSRs ----------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_no_lbr_facility_no_lbr_format(cpu: str, mode: str) -> None:
    """vmx_get_perf_capabilities()/intel_pmu_refresh(): the LBR format is advertised only
    when the guest really has the LBR MSRs; without the facility it is 0 and LBR_TOS #GPs
    consistently."""
    v = vcpu_for(cpu, mode)
    assert v.rdmsr(MSR_PERF_CAPABILITIES) & 0x3F == 0
    assert v.rdmsr(MSR_PERF_CAPABILITIES) & (1 << 13)  # full-width writes stay
    assert gp_vector(v.rdmsr, MSR_LBR_TOS) == 13


@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_lbr_facility_gives_format_and_msrs(cpu: str) -> None:
    host = vpmu.compose(cpu=cpu, mode="emulated", facilities=("lbr",), cpus=1)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    assert v.rdmsr(MSR_PERF_CAPABILITIES) & 0x3F == 5
    assert gp_vector(v.rdmsr, MSR_LBR_TOS) == 0


def test_guest_lbr_without_facility_is_refused() -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    with pytest.raises(vpmu.ConfigError):
        host.create_vm(vcpus=1, pmu=vpmu.GuestPmuConfig(lbr=True))


# ---- item 5: IA32_XSS -----------------------------------------------------------------------
MSR_IA32_XSS = 0xDA0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/icelake", "intel/sapphirerapids", "amd/zen4"))
def test_no_xsaves_no_ia32_xss(cpu: str, mode: str) -> None:
    """Without XSAVES in the guest CPUID (no Arch LBR component here) IA32_XSS #GPs
    (kvm_get_msr_common/kvm_set_msr_common) and XSAVES/XRSTORS #UD (SDM Vol. 2 XSAVES)."""
    v = vcpu_for(cpu, mode)
    assert not v.cpuid(0xD, 1)[0] & (1 << 3)
    assert gp_vector(v.rdmsr, MSR_IA32_XSS) == 13
    assert gp_vector(v.wrmsr, MSR_IA32_XSS, 0) == 13
    assert gp_vector(v.xsaves, 1 << 15) == 6


@pytest.mark.parametrize(
    ("mode", "opts"), [("emulated", {}), ("mediated", {"facilities": "passthrough", "switch_at": "run_loop"})]
)
def test_arch_lbr_guest_has_ia32_xss(mode: str, opts: dict[str, str]) -> None:
    host = vpmu.compose(cpu="intel/sapphirerapids", mode=mode, facilities=("arch_lbr",), cpus=1, mode_options=opts)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    assert v.rdmsr(MSR_IA32_XSS) == 0
    assert gp_vector(v.wrmsr, MSR_IA32_XSS, 1 << 11) == 13  # CET_U: not this guest's
    v.wrmsr(MSR_IA32_XSS, 1 << 15)
    assert v.rdmsr(MSR_IA32_XSS) == 1 << 15
    assert 15 in v.xsaves(1 << 15).components


# ---- host-initiated access (KVM_GET_MSRS / KVM_SET_MSRS) ------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_host_initiated_intel_rules(cpu: str, mode: str) -> None:
    """kvm_pmu_set_msr(): GLOBAL_STATUS is writable by the host only; PERF_CAPABILITIES may
    be restored to its value only (vmx_set_msr / the model keeps it fixed); no exit and no
    guest instruction is involved."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    g.enable_counting()
    assert gp_vector(v.wrmsr, MSR_GLOBAL_STATUS, 1) == 13
    exits = dict(v.stats.exits)
    v.host_set_msr(MSR_GLOBAL_STATUS, 1)
    assert v.host_get_msr(MSR_GLOBAL_STATUS) & 1
    caps = v.host_get_msr(MSR_PERF_CAPABILITIES)
    v.host_set_msr(MSR_PERF_CAPABILITIES, caps)
    with pytest.raises(vpmu.PerfError):
        v.host_set_msr(MSR_PERF_CAPABILITIES, caps ^ (1 << 13))
    with pytest.raises(vpmu.PerfError):
        v.host_get_msr(0xDEAD)
    v.host_set_msr(g.ctr, 5000)
    assert v.host_get_msr(g.ctr) == 5000
    assert dict(v.stats.exits) == exits  # host-initiated accesses never exit
    # the counter counts on from the host-written value (no guest instruction in between)
    v.execute(vpmu.Work(instructions=1000))
    assert v.host_get_msr(g.ctr) == 6000
    assert v.rdmsr(MSR_GLOBAL_STATUS) & 1


@pytest.mark.parametrize("mode", MODES)
def test_host_initiated_amd_status_clr_set_ignored(mode: str) -> None:
    """kvm_pmu_set_msr(): AMD GLOBAL_STATUS_CLR/SET act on guest writes only; GLOBAL_STATUS
    is read-only to the guest (the write is ignored, no #GP: "Per PPR, Read-only MSR. Writes
    are ignored") and host-writable."""
    v = vcpu_for("amd/zen4", mode)
    status, clr, setr = 0xC0000300, 0xC0000302, 0xC0000303
    v.wrmsr(status, 0b11)  # ignored, no #GP
    assert v.rdmsr(status) == 0
    v.host_set_msr(setr, 0b1)  # host write ignored
    assert v.host_get_msr(status) == 0
    v.host_set_msr(status, 0b10)
    assert v.rdmsr(status) == 0b10
    v.host_set_msr(clr, 0b10)  # host write ignored
    assert v.rdmsr(status) == 0b10
    v.wrmsr(clr, 0b10)
    v.wrmsr(setr, 0b100)
    assert v.rdmsr(status) == 0b100


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", COUNTING)
def test_save_state_is_expressible_through_host_msrs(cpu: str, mode: str) -> None:
    """What save_state carries for the PMU is KVM_GET_MSRS of the vendor's state MSRs, and
    KVM_SET_MSRS of them on another vCPU gives the same guest view."""
    v = vcpu_for(cpu, mode)
    g = Raw(v)
    g.enable_counting()
    v.execute(vpmu.Work(instructions=N))
    v.wrmsr(g.ctrl, 0)
    msrs = {m: v.host_get_msr(m) for m in v.pmu.state_msrs()}
    assert msrs == {int(k, 16): val for k, val in v.save_state()["pmu"].items()}
    w = vcpu_for(cpu, mode)
    for m, val in msrs.items():
        w.host_set_msr(m, val)
    assert {m: w.host_get_msr(m) for m in msrs} == msrs
    assert w.rdmsr(g.ctr) == N + 1


# ---- item 7: which global/legacy MSRs an AMD guest reaches -----------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_amd_k7_msrs_follow_kvm_pmu_is_valid_msr(mode: str) -> None:
    """amd_is_valid_msr(): K7 EVNTSEL/PERFCTR0-3 are valid for any version > 0 (a counter
    past the guest's count then #GPs in amd_pmu_get_msr/set_msr); GLOBAL_CTL/STATUS/
    STATUS_CLR/STATUS_SET for version > 1; a version-0 guest's K7 MSRs read 0 and drop
    writes (kvm_get_msr_common / kvm_set_msr_common)."""
    v = vcpu_for("amd/zen4", mode, vpmu.GuestPmuConfig(gp_counters=2))
    assert len(v.pmu.gp) == 2
    for msr in (0xC0010002, 0xC0010003, 0xC0010006, 0xC0010007):
        assert gp_vector(v.rdmsr, msr) == 13, hex(msr)
        assert gp_vector(v.wrmsr, msr, 0) == 13, hex(msr)
    assert gp_vector(v.rdmsr, 0xC0010205) == 13  # F15H PERF_CTR2: not the guest's
    for msr in (0xC0000300, 0xC0000301, 0xC0000302, 0xC0000303):
        assert gp_vector(v.rdmsr, msr) == 0, hex(msr)
    v1 = vcpu_for("amd/zen2", "emulated")
    for msr in (0xC0000300, 0xC0000301, 0xC0000302, 0xC0000303):
        assert gp_vector(v1.rdmsr, msr) == 13, hex(msr)  # version 1: no global MSRs
    off = vcpu_for("amd/zen4", mode, vpmu.GuestPmuConfig(version=0))
    off.wrmsr(0xC0010004, 5)
    assert off.rdmsr(0xC0010004) == 0
