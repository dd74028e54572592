"""Scenario schema, loading, overrides and the runner (in-process, on the toy fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vpmu_core.testing.toy as toy
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.scenario import Scenario, ScenarioError, load, run_scenario, shipped_scenarios, validate
from vpmu_core.scenario.loader import apply_set, parse_mode_spec, read_data

BASE = {
    "name": "t",
    "cpu": "toy/basic",
    "mode": "reference",
    "duration_ns": 3_000_000,
    "host": {
        "tasks": [{"name": "stress", "cpu": 1, "work": {"instructions": 4_000_000}}],
        "perf": [{"name": "w", "class": "cpu_pinned", "cpu": "all", "events": ["cycles"]}],
    },
    "vms": [
        {
            "name": "vm0",
            "pin": [0],
            "work": [{"work": {"instructions": 1_000_000}, "repeat": 3, "every_ns": 1_000_000}],
            "perf": [{"name": "s", "events": ["instructions", 0x05]}],
        }
    ],
}


@pytest.fixture(scope="module")
def cat():
    return build_catalog([("toy", toy)], [])


def test_shipped_scenarios_validate() -> None:
    names = shipped_scenarios()
    assert {"default", "cloud_mix"} <= set(names)
    for name, path in names.items():
        scn = validate(read_data(Path(path)), path)
        assert scn.name == name
        assert scn.description


def test_default_is_host_guest_contention() -> None:
    scn = validate(read_data(Path(shipped_scenarios()["default"])))
    assert (scn.cpu, scn.mode) == ("intel/icelake", "emulated")
    prof = next(s for s in scn.host.perf if s.name == "profiler")
    assert prof.klass == "cpu_pinned" and prof.start_ns > 0 and scn.vms[0].perf


def test_runner_counts_guest_work_and_repeats(cat) -> None:
    res = run_scenario(validate(BASE), catalog=cat, trace=True)
    rep = res.report
    guest = {e["label"]: e for e in rep["events"] if e["scope"] == "guest:vm0"}
    # 3 repeats queued 1 ms apart, plus the guest perf driver's own MSR instructions
    assert 3_000_000 <= guest["s/instructions"]["truth"] < 3_000_100
    assert guest["s/raw:0x5"]["kind"] == "branches"
    watchdog = [e for e in rep["events"] if e["label"] == "w/cycles"]
    assert [e["cpu"] for e in watchdog] == [0, 1]
    assert rep["summary"]["guest_events"] == 2
    assert res.timeline is not None and "vm0/vcpu0" in res.timeline.tracks()


def test_runner_is_deterministic(cat) -> None:
    a = run_scenario(validate(BASE), catalog=cat).report
    b = run_scenario(validate(BASE), catalog=cat).report
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_open_errors_are_reported_not_fatal(cat) -> None:
    data = json.loads(json.dumps(BASE))
    data["host"]["perf"].append(
        {"name": "lbr", "class": "cpu_pinned", "cpu": 0, "events": ["branches"], "branch_sample_type": ["any"]}
    )
    rep = run_scenario(validate(data), catalog=cat).report
    assert rep["open_errors"][0]["session"] == "lbr"
    assert rep["open_errors"][0]["errno"] == 95  # EOPNOTSUPP: toy/basic has no LBR
    assert rep["summary"]["open_errors"] == 1


def test_session_stop_disables(cat) -> None:
    data = json.loads(json.dumps(BASE))
    data["host"]["perf"][0].update(start_ns=1_000_000, stop_ns=2_000_000)
    rep = run_scenario(validate(data), catalog=cat).report
    w = [e for e in rep["events"] if e["label"] == "w/cycles"]
    assert all(e["state"] == "OFF" and 900_000 <= e["time_enabled_ns"] <= 1_100_000 for e in w)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"cpus": 0}, "cpus: Input should be greater than or equal to 1"),
        ({"bogus": 1}, "bogus: unknown field (allowed: "),
        ({"costs": {"vmexit": 3}}, "costs.vmexit: unknown field (allowed: "),
        ({"host": {"perf": [{"name": "x", "class": "cpu_pinned", "events": ["cycles"]}]}}, "needs 'cpu'"),
        (
            {"host": {"perf": [{"name": "x", "class": "task_pinned", "task": "nope", "events": ["cycles"]}]}},
            "unknown task 'nope' (allowed: vm0/vcpu0)",
        ),
        (
            {"host": {"perf": [{"name": "x", "class": "per_cpu", "cpu": 0, "events": ["cycles"]}]}},
            "'cpu_pinned', 'task_pinned', 'cpu_flexible' or 'task_flexible'",
        ),
        ({"vms": [{"name": "v", "vcpus": 2, "pin": [0]}]}, "pin needs one host CPU per vCPU"),
        ({"vms": [{"name": "v", "exits": {"fastpath_share": 0.9, "userspace_share": 0.5}}]}, "must be <= 1"),
        ({"vms": [{"name": "v", "perf": [{"name": "p", "events": ["instr"]}]}]}, "unknown event 'instr'"),
    ],
)
def test_validation_messages(patch: dict, needle: str) -> None:
    data = {**json.loads(json.dumps(BASE)), **patch}
    with pytest.raises(ScenarioError) as ei:
        validate(data, "f.yaml")
    assert str(ei.value).startswith("f.yaml: ")
    assert needle in str(ei.value)


def test_set_paths_by_index_and_name() -> None:
    data = json.loads(json.dumps(BASE))
    apply_set(data, ["vms", "vm0", "vcpus"], 2)
    apply_set(data, ["vms", "0", "pin"], [0, 1])
    apply_set(data, ["host", "perf", "w", "start_ns"], 5)
    apply_set(data, ["costs", "vmexit_fastpath"], 10)
    scn = validate(data)
    assert scn.vms[0].vcpus == 2 and scn.host.perf[0].start_ns == 5 and scn.cost_overrides() == {"vmexit_fastpath": 10}


def test_load_overrides(tmp_path: Path, cat) -> None:
    p = tmp_path / "s.yaml"
    import yaml

    p.write_text(yaml.safe_dump(BASE))
    scn, src = load(str(p), mode="other:x=1,y=on", facilities=["lbr"], sets=["seed=9"], catalog=cat)
    assert (scn.mode, scn.mode_options, scn.facilities, scn.seed) == ("other", {"x": 1, "y": True}, ["lbr"], 9)
    assert src == str(p)
    assert parse_mode_spec("mediated:switch_at=exit") == ("mediated", {"switch_at": "exit"})


def test_schema_forbids_extra_everywhere() -> None:
    schema = Scenario.model_json_schema(by_alias=True)
    for name, d in schema["$defs"].items():
        if d.get("type") == "object" and "properties" in d:
            if name == "CostOverrides":  # plugins' own cost fields: numbers, checked by name at validate
                assert d.get("additionalProperties") == {"type": "number", "minimum": 0}, name
                continue
            assert d.get("additionalProperties") is False, name


def test_scripted_guest_msr_writes_and_their_faults(cat) -> None:
    scn = validate(
        {
            "name": "m",
            "cpu": "toy/basic",
            "mode": "reference",
            "cpus": 1,
            "duration_ns": 2_000_000,
            "vms": [
                {
                    "name": "vm0",
                    "msrs": [
                        {"at_ns": 0, "msr": 0x300, "value": 0},
                        {"at_ns": 0, "msr": 0x100, "value": 0x430001},  # toy: instructions, USR|OS|EN
                        {"at_ns": 0, "msr": 0x300, "value": 1},
                        {"at_ns": 1_000_000, "msr": 0x100, "value": 1 << 36},  # reserved bit: #GP
                    ],
                    "work": [{"work": {"instructions": 1_000_000}}],
                }
            ],
        }
    )
    res = run_scenario(scn, catalog=cat)
    faults = res.report["guest_faults"]
    assert [(f["msr"], f["vector"]) for f in faults] == [("0x100", 13)]
    v = res.host.vms[0].vcpus[0]
    # the work + the enabling WRMSR (counted after it took effect, DESIGN §5); the faulting
    # WRMSR does not retire, so nothing counts it
    assert v.pmu.read_counter(v.pmu.gp[0]) == 1_000_001


def _lifecycle(vm_patch: dict) -> dict:
    data = json.loads(json.dumps(BASE))
    data["vms"][0].update(vm_patch)
    return data


def test_vm_destroy_ns_stops_the_guest_and_keeps_its_figures(cat) -> None:
    """destroy_ns: work after it never runs (repeats are dropped), the report keeps the VM's
    figures as they were at the destroy, and guest perf events end then."""
    scn = validate(_lifecycle({"destroy_ns": 900_000}), "t.yaml")
    rep = run_scenario(scn, catalog=cat).report
    guest = [e for e in rep["events"] if e["scope"] == "guest:vm0"]
    assert guest and all(1_000_000 <= e["truth"] < 1_000_100 for e in guest if e["kind"] == "instructions")
    assert all(e["time_enabled_ns"] <= 900_000 for e in guest)
    assert rep["overhead"]["vm0/vcpu0"]["guest_cycles"] == 1_000_000  # one of the three repeats
    full = run_scenario(validate(json.loads(json.dumps(BASE)), "t.yaml"), catalog=cat).report
    assert full["overhead"]["vm0/vcpu0"]["guest_cycles"] == 3_000_000


def test_vm_start_ns_creates_the_vm_later(cat) -> None:
    patch = {"start_ns": 1_000_000, "work": [{"at_ns": 1_000_000, "work": {"instructions": 500_000}}]}
    patch["perf"] = [{"name": "s", "events": ["instructions"], "start_ns": 1_000_000}]
    res = run_scenario(validate(_lifecycle(patch), "t.yaml"), catalog=cat)
    (ev,) = [e for e in res.report["events"] if e["scope"] == "guest:vm0"]
    assert 500_000 <= ev["truth"] < 500_100 and ev["time_enabled_ns"] <= 2_000_000  # + guest perf MSR accesses


def test_host_session_on_a_vcpu_that_is_gone_is_esrch(cat) -> None:
    data = _lifecycle({"destroy_ns": 1_000_000})
    data["host"]["perf"].append(
        {"name": "late", "class": "task_pinned", "task": "vm0/vcpu0", "events": ["cycles"], "start_ns": 2_000_000}
    )
    rep = run_scenario(validate(data, "t.yaml"), catalog=cat).report
    (err,) = [e for e in rep["open_errors"] if e["session"] == "late"]
    assert err["errno"] == 3 and err["where"] == "task vm0/vcpu0"  # ESRCH


@pytest.mark.parametrize(
    ("vm_patch", "needle"),
    [
        ({"destroy_ns": 0}, "destroy_ns (0) must be after start_ns (0)"),
        ({"start_ns": 2_000_000}, "work[0].at_ns (0) is outside the VM's lifetime (allowed: >= 2000000)"),
        ({"destroy_ns": 1_000_000, "perf": [{"name": "p", "events": ["cycles"], "start_ns": 1_000_000}]}, "perf[0]"),
        ({"msrs": [{"at_ns": 5, "msr": 0x10, "value": 1}], "start_ns": 10, "work": []}, "msrs[0].at_ns (5)"),
    ],
)
def test_vm_lifetime_validation(vm_patch: dict, needle: str) -> None:
    with pytest.raises(ScenarioError) as ei:
        validate(_lifecycle(vm_patch), "f.yaml")
    assert needle in str(ei.value) and "vms[0]" in str(ei.value)
