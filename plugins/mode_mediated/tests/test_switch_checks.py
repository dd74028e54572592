"""The switch's leak checks still see what they must once their lookups are kept per vCPU
and CPU (`Switcher._pairs`, `_exposure_leaks`): a changed interception state is checked
anew, a guest value left in hardware is reported at put, and a clean switch is recorded as
a passed check."""

from __future__ import annotations

from vpmu_core import ExitProfile, Work


def test_a_changed_passthrough_set_is_checked_at_the_next_load(host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake", cpus=1, switch_at="run_loop")
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=0)).vcpus[0]
    d = guest_driver(v, "intel")
    d.program(0, "instructions")
    v.execute(Work(instructions=1000))
    v.cpuid(0)
    checks = host.leaks.checks
    assert checks > 0 and host.leaks.leaks == []
    st = v.mode_state
    exposed = set(st.gp_idx + st.fixed_idx)
    hidden = next(h for h in host.cpus[0].pmu.pmcs if h.idx not in exposed)  # Ice Lake fixed3
    msr = host.cpus[0].pmu.counter_msrs(hidden)[0]
    st.passthrough = st.passthrough | {msr}
    v.cpuid(0)
    assert host.leaks.checks == checks + 2  # one put, one load
    (leak,) = host.leaks.leaks
    assert leak.where == f"{v.name} load on cpu0"
    assert f"host pmc{hidden.idx} (MSR {msr:#x}) readable by the guest" in leak.what


def test_a_guest_value_left_in_hardware_is_reported_at_put(host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake", cpus=1, switch_at="run_loop")
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=0)).vcpus[0]
    d = guest_driver(v, "intel")
    d.program(0, "instructions")
    v.execute(Work(instructions=1000))
    sw = host.mode.switcher
    hw = host.cpus[0].pmu
    real = sw._check_put

    def leave_a_value(vcpu, cpu):
        hw.pmc(0).value = 0x1234
        real(vcpu, cpu)
        hw.pmc(0).value = 0

    sw._check_put = leave_a_value
    v.cpuid(0)
    assert any("pmc0 = 0x1234" in leak.what and leak.where == f"{v.name} put on cpu0" for leak in host.leaks.leaks)
