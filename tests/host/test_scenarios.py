"""Scenario files: every bundled fixture reproduces its golden trace, which has the form
docs/scenarios.md specifies (hugepfn.host.trace_check); the CLI prints table or JSON; invalid
files give one-line errors naming the step and the field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hugepfn.host.scenario import ScenarioError, parse_scenario, run_scenario
from hugepfn.host.scenario.results import trace_diff
from hugepfn.host.scenario.steps import step_kind
from hugepfn.host.scenario.wiring import default_registry
from hugepfn.host.trace_check import check_trace

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "fixtures" / "scenarios"
TRACES = REPO / "fixtures" / "traces"
FIXTURES = sorted(SCENARIOS.glob("*.toml"))


def test_there_are_at_least_ten_fixtures_besides_the_demo():
    assert len([f for f in FIXTURES if f.stem != "demo"]) >= 10


@pytest.mark.parametrize("scenario", FIXTURES, ids=lambda p: p.stem)
def test_fixture_matches_its_golden_trace(scenario):
    # Never rewritten here: `hugepfn run ... --golden fixtures/traces --update-golden` rewrites
    # golden traces and prints their diffs for review (docs/scenarios.md).
    got = run_scenario(scenario)
    golden = TRACES / f"{scenario.stem}.json"
    diff = trace_diff(golden.read_text(), got.dumps(), str(golden))
    assert got.to_json() == json.loads(golden.read_text()), "\n".join(diff)


@pytest.mark.parametrize("scenario", FIXTURES, ids=lambda p: p.stem)
def test_golden_trace_passes_check_trace(scenario):
    assert check_trace(json.loads((TRACES / f"{scenario.stem}.json").read_text())) == []


def hugepfn(*args):
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_table_and_json():
    table = hugepfn("run", "fixtures/scenarios/demo.toml")
    assert table.returncode == 0 and table.stderr == ""
    assert table.stdout.startswith("hugepfn trace: kernel 7.3, arch x86_64, thp always, policy upstream\n")
    assert "call: huge_fault(order 18) -> VM_FAULT_NOPAGE" in table.stdout
    assert "signal: SIGBUS BUS_ADRERR tid 4242 addr 0x7f0000123456" in table.stdout
    js = hugepfn("run", "fixtures/scenarios/demo.toml", "--json")
    assert js.returncode == 0
    assert json.loads(js.stdout) == json.loads((TRACES / "demo.json").read_text())


def test_cli_user_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[step]]\ndo = "acces"\n')
    out = hugepfn("run", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    # (the known kinds are listed; optional models may add kinds after the built-in ones)
    [line] = out.stderr.splitlines()
    prefix = "hugepfn run: error: step 1: do: unknown step kind 'acces' (known: "
    assert line.startswith(prefix) and line.endswith(")")
    known = line[len(prefix):-1].split(", ")
    assert known[:4] == ["mmap", "munmap", "madvise", "access"]
    assert set(known) >= {"touch", "config_write", "reset", "zap", "sysctl", "prctl", "poison", "memory_failure",
                          "hard_offline_page", "register", "unregister"}
    bad.write_text("kernel = \n")
    out = hugepfn("run", str(bad))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith(f"hugepfn run: error: {bad}: invalid TOML: ")
    out = hugepfn("run", str(tmp_path / "missing.toml"))      # a missing scenario is bad input too
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"hugepfn run: error: no scenario file or bundled scenario '{tmp_path / 'missing.toml'}' "
                          f"(`hugepfn scenarios` lists the {len(FIXTURES)} bundled ones)\n")


BASE = {"device": [{"name": "D", "bars": [{"index": 0, "phys": 0x3800000000, "size": "1G"}]}],
        "process": [{"comm": "q", "pid": 10, "threads": [10, 11]}]}


def scenario_with(step=None, **top):
    data = {**BASE, **top}
    if step is not None:
        data["step"] = [step]
    return data


@pytest.mark.parametrize("data,message", [
    (scenario_with({"do": "access", "tid": 10, "addr": "zz"}),
     "step 1 (access): addr: expected a size such as 4K, 0x1000, 8GiB or 1_000, got 'zz'"),
    (scenario_with({"do": "access", "tid": 10}), "step 1 (access): addr: missing"),
    (scenario_with({"do": "access", "tid": 12, "addr": 0}), "step 1 (access): tid: no thread with tid 12"),
    (scenario_with({"do": "access", "tid": 10, "addr": 0, "colour": 1}),
     "step 1 (access): unknown field 'colour' (expected addr, tid, write)"),
    (scenario_with({"do": "access", "tid": 10, "addr": 0, "write": "yes"}),
     "step 1 (access): write: expected true or false, got 'yes'"),
    (scenario_with({"do": "mmap", "pid": 11, "device": "D", "region": 0, "length": "1G", "addr": 0}),
     "step 1 (mmap): pid: no process with pid 11"),
    (scenario_with({"do": "mmap", "pid": 10, "device": "E", "region": 0, "length": "1G", "addr": 0}),
     "step 1 (mmap): device: no device named 'E'"),
    (scenario_with({"do": "mmap", "pid": 10, "device": "D", "region": 99, "length": "1G", "addr": 0}),
     "step 1 (mmap): region: must be a region index 0..15, got 99"),
    (scenario_with({"do": "madvise", "pid": 10, "addr": 0, "length": 1, "advice": "MADV_FREE"}),
     "step 1 (madvise): advice: must be one of MADV_NORMAL, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, "
     "got 'MADV_FREE'"),
    (scenario_with({"do": "config_write", "device": "D", "offset": 4, "size": 3, "value": 0}),
     "step 1 (config_write): size: must be 1, 2 or 4, got 3"),
    (scenario_with({"do": "memory_failure", "pfn": 1, "flags": ["MF_BOGUS"]}),
     "step 1 (memory_failure): flags: unknown flag(s) MF_BOGUS (known: MF_COUNT_INCREASED, MF_ACTION_REQUIRED, "
     "MF_MUST_KILL, MF_SOFT_OFFLINE, MF_UNPOISON, MF_SW_SIMULATED, MF_NO_RETRY, MF_MEM_PRE_REMOVE)"),
    (scenario_with({"do": "memory_failure", "pfn": 1, "current": "init"}),
     "step 1 (memory_failure): current: expected a tid or \"kworker\", got 'init'"),
    (scenario_with({"do": "hard_offline_page", "phys": "1G", "current": 99}),
     "step 1 (hard_offline_page): current: no thread with tid 99"),
    (scenario_with({"do": "prctl", "tid": 10, "option": "PR_SET_NAME"}),
     "step 1 (prctl): option: expected an integer or one of PR_MCE_KILL, PR_MCE_KILL_GET, PR_SET_THP_DISABLE, "
     "PR_GET_THP_DISABLE, got 'PR_SET_NAME'"),
    (scenario_with({"do": "sysctl", "name": "vm.swappiness", "value": 1}),
     "step 1 (sysctl): name: unknown sysctl 'vm.swappiness' (known: vm.memory_failure_early_kill, "
     "vm.memory_failure_recovery)"),
    (scenario_with({"do": "poison", "device": "D", "region": 0}), "step 1 (poison): offset: missing"),
    (scenario_with({"tid": 10}), "step 1: do: missing"),
    (scenario_with({"do": "touch", "tid": 10, "addr": 0, "length": "1G", "stride": 100}),
     "step 1 (touch): stride: must be a positive multiple of 4K, got 0x64"),
    (scenario_with(None, kernel="5.10"), "scenario: kernel: must be one of 6.1, 6.12, 6.16, 6.17, 6.18, 6.19, 7.0, "
     "7.1, 7.2, 7.3, 6.12.0, got '5.10'"),
    (scenario_with(None, thp="sometimes"), "scenario: thp: must be one of always, madvise, never, got 'sometimes'"),
    (scenario_with(None, colour=1), "scenario: unknown field 'colour' (expected arch, description, device, dyndbg, "
                                    "kernel, plugins, policy, process, step, sysctl, thp, thp_sysfs_gates_pfnmap)"),
    (scenario_with(None, sysctl={"vm.memory_failure_early_kill": 5}),
     "sysctl: vm.memory_failure_early_kill: must be an integer 0..1, got 5"),
    ({**BASE, "device": [{"name": "D", "bars": [{"index": 7, "phys": 0, "size": 1}]}]},
     "device[0].bars[0]: index: must be 0..5, got 7"),
    ({**BASE, "device": [{"name": "D", "driver": "nouveau"}]},
     "device[0]: driver: unknown driver 'nouveau' (installed: "
     + ", ".join(__import__("hugepfn.host.drivers", fromlist=["x"]).default_registry().names())
     + "; add one with --driver-module MODULE, a scenario's plugins = [\"MODULE\"] or the hugepfn.drivers "
       "entry point)"),
    ({**BASE, "device": [{"name": "D", "bdf": "1:2:3"}]},
     "device[0]: bdf: expected a PCI address like 0000:01:00.0, got '1:2:3'"),
    ({**BASE, "device": [{"name": "D", "usemem": {"memphys": 0, "memlength": 1}}]},
     "device[0]: usemem: only nvgrace-gpu devices have usemem"),
    ({**BASE, "process": [{"comm": "q", "pid": 10, "threads": [11, 10]}]},
     "process[0]: threads: the first thread must be the pid 10, got 11"),
    ({**BASE, "process": [{"comm": "q", "pid": 10}, {"comm": "r", "pid": 10}]}, "process[1]: pid: duplicate pid 10"),
    ({**BASE, "step": {"do": "access"}}, "step: expected an array of tables, got {'do': 'access'}"),
])
def test_invalid_scenarios_name_the_place_and_field(data, message):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data)
    assert str(exc.value) == message and "\n" not in str(exc.value)


def test_numbers_accept_size_strings_and_ints():
    s = parse_scenario(scenario_with({"do": "zap", "device": "D", "offset": "0x1000", "length": "2M"}))
    assert s.steps[0].fields == {"device": "D", "offset": 0x1000, "length": 2 << 20}
    s = parse_scenario(scenario_with({"do": "zap", "device": "D", "offset": 4096, "length": "1GiB"}))
    assert s.steps[0].fields["length"] == 1 << 30


def test_a_declared_kind_without_a_handler_is_validated_but_not_run():
    registry = default_registry().without_handler("poison")
    s = parse_scenario(scenario_with({"do": "poison", "device": "D", "region": 0, "offset": "4K"}), registry=registry)
    with pytest.raises(ScenarioError) as exc:
        run_scenario(s)
    assert str(exc.value) == "step 1: do = 'poison' is not supported yet"
    assert default_registry().handler("poison") is not None          # the default registry is untouched


def test_a_registered_handler_runs_and_its_effects_reach_the_trace():
    seen = []

    def handler(run, step):
        seen.append((step.index, step.fields))
        thread = run.machine.tasks.thread(10)
        run.machine.tasks.send_sig_mceerr(5, 0x7f0000001000, 12, thread)
        run.machine.klog.printk("test: poison noted")
        return -16
    registry = default_registry().copy()
    registry.add_kinds([step_kind("poison", registry.step_kinds["poison"].fields, handler)])
    trace = run_scenario(parse_scenario(scenario_with({"do": "poison", "device": "D", "region": 0, "offset": "4K"}),
                                        registry=registry))
    assert seen == [(1, {"device": "D", "region": 0, "offset": 4096})]
    assert trace.to_json()["steps"] == [{
        "index": 1, "do": "poison", "device": "D", "region": 0, "offset": "0x1000", "ret": "-EBUSY",
        "signals": [{"tid": 10, "signo": "SIGBUS", "code": "BUS_MCEERR_AO", "addr": "0x7f0000001000",
                     "addr_lsb": 12, "delivered": True}],
        "log": ["test: poison noted"]}]


def test_pending_signals_are_handled_when_the_thread_runs_again(tmp_path):
    """Two SIGBUS in two accesses of one thread are both delivered (the first was handled on the
    return to user space); a signal to a thread that has not run since stays pending."""
    data = scenario_with(None)
    data["step"] = [{"do": "mmap", "pid": 10, "device": "D", "region": 0, "length": "1G", "addr": 0x7f0000000000},
                    {"do": "config_write", "device": "D", "offset": 4, "size": 2, "value": 0},
                    {"do": "access", "tid": 10, "addr": 0x7f0000000000},
                    {"do": "access", "tid": 10, "addr": 0x7f0000000008}]
    steps = run_scenario(parse_scenario(data)).to_json()["steps"]
    assert [s["signals"][0]["delivered"] for s in steps[2:]] == [True, True]
