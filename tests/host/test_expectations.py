"""Scenarios as tests: [step.expect] tables, `hugepfn run`'s exit status and failure lines, TAP
and JUnit reports (checked by real consumers: tap.py's parser, prove, and xmlschema with the
Jenkins xunit-plugin's junit-10.xsd), golden traces compared and rewritten only as diffs."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hugepfn.host.scenario import ScenarioError, load_scenario, parse_scenario, run_scenario
from hugepfn.host.scenario.expect import check_trace

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "fixtures" / "scenarios"
FIXTURES = sorted(SCENARIOS.glob("*.toml"))
JUNIT_XSD = Path(sys.prefix) / "share" / "hugepfn" / "junit-10.xsd"

SCENARIO = """
description = "one PMD"
[[device]]
name = "D"
bars = [{ index = 0, phys = 0x3800000000, size = "1G" }]
[[process]]
comm = "q"
pid = 10
threads = [10, 11]
[[step]]
do = "mmap"
pid = 10
device = "D"
region = 0
length = "4M"
addr = 0x7f0000000000
[step.expect]
ret = 0
[[step]]
do = "access"
tid = 10
addr = 0x7f0000201000
[step.expect]
ret = "VM_FAULT_NOPAGE"
calls = [[18, "VM_FAULT_FALLBACK"], [9, "VM_FAULT_NOPAGE"]]
mapped = { level = "pmd", va = "0x7f0000200000", pfn = 0x3800200 }
signals = []
events = []
"""
WRONG_MAPPED = 'mapped = { level = "pud", va = "0x7f0000200000", pfn = 0x3800200 }'


def hugepfn(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def calls_of(trace_json: dict, index: int) -> list[list]:
    return [[c["order"], c["ret"]] for c in trace_json["steps"][index - 1]["calls"]]


@pytest.fixture
def right(tmp_path):
    """SCENARIO with the calls the model makes today (the per-VMA-lock retry may add calls)."""
    trace = run_scenario(parse_scenario(tomllib.loads(SCENARIO))).to_json()
    text = SCENARIO.replace('calls = [[18, "VM_FAULT_FALLBACK"], [9, "VM_FAULT_NOPAGE"]]',
                            f"calls = {json.dumps(calls_of(trace, 2))}")
    return write(tmp_path, "one_pmd.toml", text)


# -- the bundled fixtures ----------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", FIXTURES, ids=lambda p: p.stem)
def test_every_fixture_carries_expectations_on_every_step(scenario):
    """Every step says what it expects, but those after a step expected to crash the kernel
    (ret "Oops": the run ends there, nothing later is recorded)."""
    s = load_scenario(scenario)
    crash = next((st.index for st in s.steps if st.expect and st.expect.get("ret") == "Oops"), len(s.steps))
    assert [step.index for step in s.steps[:crash] if not step.expect] == []


def test_every_fixture_passes_its_expectations_through_hugepfn_run():
    out = hugepfn("run", "fixtures/scenarios")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", p.stem] for p in FIXTURES]
    assert lines[-1] == f"{len(FIXTURES)} scenarios: {len(FIXTURES)} passed, 0 failed"
    assert out.stderr == ""


# -- parsing ------------------------------------------------------------------------------------------
def test_numbers_may_be_integers_or_strings(right):
    s = load_scenario(right)
    assert s.steps[1].expect["mapped"] == {"level": "pmd", "va": 0x7F0000200000, "pfn": 0x3800200}
    assert s.expectations == 6
    assert check_trace(s, run_scenario(s)) == []


@pytest.mark.parametrize("expect,message", [
    ('colour = 1', "step 2 (access): expect: unknown key 'colour' (expected ret, calls, mapped, signals, log, "
                   "log_has, events)"),
    ('mapped = { level = "pmd", va = "far" }',
     "step 2 (access): expect.mapped.va: expected a size such as 4K, 0x1000, 8GiB or 1_000, got 'far'"),
    ('calls = [[3, "VM_FAULT_NOPAGE"]]',
     "step 2 (access): expect.calls[0]: expected [order 0|9|18, \"VM_FAULT_...\"], got [3, 'VM_FAULT_NOPAGE']"),
    ('signals = [{ tid = "ten" }]', "step 2 (access): expect.signals[0].tid: expected an integer, got 'ten'"),
    ('signals = [{ si_code = 4 }]',
     "step 2 (access): expect.signals[0]: unknown field 'si_code' (expected tid, signo, code, addr, addr_lsb, "
     "delivered)"),
    ('log_has = "mce"', "step 2 (access): expect.log_has: expected a list of strings, got 'mce'"),
    ('ret = true', "step 2 (access): expect.ret: expected 0, an errno name such as \"-EINVAL\" or a VM_FAULT_* "
                   "result, got True"),
])
def test_bad_expectations_are_one_line_errors_naming_the_place(expect, message):
    text = SCENARIO.split("[step.expect]\nret = \"VM_FAULT_NOPAGE\"")[0] + f"[step.expect]\n{expect}\n"
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(tomllib.loads(text))
    assert str(exc.value) == message


def test_calls_and_mapped_belong_to_accesses_only():
    text = SCENARIO.replace("[step.expect]\nret = 0", "[step.expect]\nmapped = false", 1)
    with pytest.raises(ScenarioError, match=r"^step 1 \(mmap\): expect.mapped: only an access step has mapped$"):
        parse_scenario(tomllib.loads(text))


# -- hugepfn run ----------------------------------------------------------------------------------------
def test_all_holding_exits_0_and_prints_the_trace(right):
    out = hugepfn("run", str(right))
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("hugepfn trace: kernel 7.3")


def test_a_wrong_expectation_exits_1_with_step_field_expected_and_got(right, tmp_path):
    wrong = write(tmp_path, "wrong.toml", right.read_text().replace(
        'mapped = { level = "pmd", va = "0x7f0000200000", pfn = 0x3800200 }', WRONG_MAPPED))
    out = hugepfn("run", str(wrong))
    assert out.returncode == 1
    assert out.stdout.startswith("hugepfn trace: ")          # the trace is still printed
    assert out.stderr.splitlines() == [
        "hugepfn run: FAIL wrong (2 steps, 6 expectations): 1 failed in 1 step",
        '  step 2 (access): mapped: expected {level = "pud", va = "0x7f0000200000", pfn = "0x3800200"}, '
        'got {level = "pmd", va = "0x7f0000200000", pfn = "0x3800200"}',
    ]


def test_signal_and_event_mismatches_name_the_entry(right, tmp_path):
    text = right.read_text().replace("signals = []", 'signals = [{ tid = 10, signo = "SIGBUS", code = "SI_KERNEL" }]')
    out = hugepfn("run", str(write(tmp_path, "sig.toml", text)))
    assert out.returncode == 1
    assert out.stderr.splitlines()[1] == ('  step 2 (access): signals: expected [{tid = 10, signo = "SIGBUS", '
                                          'code = "SI_KERNEL"}], got []')


def test_a_plain_sigbus_is_written_with_code_si_kernel():
    from hugepfn.host.scenario.expect import check_record
    plain = {"signals": [{"tid": 7, "signo": "SIGBUS", "delivered": True}]}
    coded = {"signals": [{"tid": 7, "signo": "SIGBUS", "code": "BUS_MCEERR_AR", "addr": "0x1000",
                          "addr_lsb": 12, "delivered": True}]}
    want = {"signals": [{"tid": 7, "signo": "SIGBUS", "code": "SI_KERNEL"}]}
    assert check_record(want, plain) == []
    assert check_record(want, coded) == [("signals[0]", {"tid": 7, "signo": "SIGBUS", "code": "SI_KERNEL"},
                                          {"tid": 7, "signo": "SIGBUS", "code": "BUS_MCEERR_AR"})]


def test_several_scenarios_one_line_each_and_the_worst_status(right, tmp_path):
    wrong = write(tmp_path, "wrong.toml", right.read_text().replace(
        'mapped = { level = "pmd", va = "0x7f0000200000", pfn = 0x3800200 }', WRONG_MAPPED))
    out = hugepfn("run", str(right), str(wrong))
    assert out.returncode == 1 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == "PASS one_pmd (2 steps, 6 expectations)"
    assert lines[1] == "FAIL wrong (2 steps, 6 expectations): 1 failed in 1 step"
    assert lines[2].startswith("  step 2 (access): mapped: expected ")
    assert lines[-1] == "2 scenarios: 1 passed, 1 failed"
    bad = write(tmp_path, "bad.toml", '[[step]]\ndo = "acces"\n')
    out = hugepfn("run", str(right), str(bad))
    assert out.returncode == 2
    assert out.stdout.splitlines()[1].startswith(f"ERROR {bad}: step 1: do: unknown step kind 'acces'")
    assert out.stdout.splitlines()[-1] == "2 scenarios: 1 passed, 0 failed, 1 error"


def test_a_directory_and_a_bundled_name(right, tmp_path):
    out = hugepfn("run", str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("hugepfn trace: ")     # one file in it
    out = hugepfn("run", "poison-upstream", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hugepfn trace: kernel 7.0, arch x86_64, thp always, policy upstream")
    out = hugepfn("run", "no-such-scenario", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(
        "hugepfn run: error: no scenario file or bundled scenario 'no-such-scenario' (`hugepfn scenarios` lists ")


def test_json_needs_one_scenario(right):
    out = hugepfn("run", str(right), str(right), "--json")
    assert (out.returncode, out.stderr) == (2, "hugepfn run: error: --json and --output print one trace: "
                                               "give one scenario\n")


def test_hugepfn_scenarios_lists_the_bundled_ones():
    out = hugepfn("scenarios")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == [p.stem for p in FIXTURES]
    rows = [json.loads(line) for line in hugepfn("scenarios", "--json").stdout.splitlines()]
    demo = next(r for r in rows if r["name"] == "demo")
    assert demo["steps"] == len(load_scenario(SCENARIOS / "demo.toml").steps) and demo["expectations"] > 0


# -- TAP and JUnit ---------------------------------------------------------------------------------------
def test_tap_parses_with_tap_py_and_prove(right, tmp_path):
    from tap.parser import Parser

    wrong = write(tmp_path, "wrong.toml", right.read_text().replace(
        'mapped = { level = "pmd", va = "0x7f0000200000", pfn = 0x3800200 }', WRONG_MAPPED))
    out = hugepfn("run", str(right), str(wrong), "--tap")
    assert out.returncode == 1
    lines = list(Parser().parse_text(out.stdout))
    assert [line.category for line in lines if line.category != "unknown"] == [
        "version", "test", "test", "test", "plan"]
    tests = [line for line in lines if line.category == "test"]
    assert [(t.ok, t.description) for t in tests] == [
        (True, "- one_pmd"), (False, "- wrong"), (False, "- wrong: step 2 (access)")]
    assert tests[1].yaml_block is None or "mapped" in str(tests[1].yaml_block)
    if shutil.which("prove") is None:
        pytest.skip("prove (perl) is not installed: tap.py's parser checked the stream")
    tap_file = write(tmp_path, "run.tap", out.stdout)
    proved = subprocess.run(["prove", "--exec", "cat", str(tap_file)], capture_output=True, text=True)
    assert proved.returncode == 1              # prove saw the failures, and no parse error
    assert "Parse errors" not in proved.stdout
    assert "Failed 2/3 subtests" in proved.stdout


def test_junit_validates_against_the_jenkins_junit_schema(right, tmp_path):
    import xmlschema

    assert JUNIT_XSD.exists(), f"{JUNIT_XSD} is missing: `make test` fetches it (see the Makefile)"
    wrong = write(tmp_path, "wrong.toml", right.read_text().replace(
        'mapped = { level = "pmd", va = "0x7f0000200000", pfn = 0x3800200 }', WRONG_MAPPED))
    bad = write(tmp_path, "bad.toml", "kernel = \n")
    report = tmp_path / "junit.xml"
    out = hugepfn("run", str(right), str(wrong), str(bad), "--junit", str(report))
    assert out.returncode == 2
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    schema.validate(str(report))
    data = schema.to_dict(str(report))
    assert (data["@tests"], data["@failures"], data["@errors"]) == ("4", "2", "1")
    cases = [(c["@name"], sorted(k for k in c if not k.startswith("@"))) for c in data["testcase"]]
    assert cases == [("one_pmd", []), ("wrong", ["failure"]), ("wrong: step 2 (access)", ["failure"]),
                     ("bad", ["error"])]
    assert "step 2 (access): mapped: expected" in data["testcase"][2]["failure"][0]["$"]


# -- golden traces ------------------------------------------------------------------------------------------
def test_a_golden_difference_fails_and_update_rewrites_it_but_still_fails(right, tmp_path):
    golden = tmp_path / "golden.json"
    first = hugepfn("run", str(right), "--golden", str(golden), "--update-golden")
    assert first.returncode == 1                           # a new golden file is a change to review
    assert f"golden trace rewritten: review this diff (git diff {golden})" in first.stderr
    assert f"+++ b/{golden}" in first.stderr
    assert hugepfn("run", str(right), "--golden", str(golden)).returncode == 0
    data = json.loads(golden.read_text())
    data["steps"][1]["mapped"]["level"] = "pud"
    golden.write_text(json.dumps(data, indent=1) + "\n")
    out = hugepfn("run", str(right), "--golden", str(golden))
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == "hugepfn run: FAIL one_pmd (2 steps, 6 expectations): golden trace differs"
    assert re.search(r'^  - +"level": "pud",$', out.stderr, re.M) and re.search(r'^  \+ +"level": "pmd",$', out.stderr, re.M)
    assert json.loads(golden.read_text()) == data          # only --update-golden writes
    out = hugepfn("run", str(right), "--golden", str(golden), "--update-golden")
    assert out.returncode == 1 and re.search(r'^  \+ +"level": "pmd",$', out.stderr, re.M)
    assert hugepfn("run", str(right), "--golden", str(golden)).returncode == 0
