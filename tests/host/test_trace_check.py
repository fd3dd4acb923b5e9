"""The trace-form checker (hugepfn.host.trace_check): a real trace passes; each way of breaking
the form is one line naming the place; the command-line entries; bad files are one line."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hugepfn.host import trace_check
from hugepfn.host.scenario import run_scenario
from hugepfn.host.trace_check import check_trace

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "fixtures" / "scenarios" / "demo.toml"


@pytest.fixture(scope="module")
def demo() -> dict:
    return run_scenario(DEMO).to_json()


def first(trace: dict, do: str) -> dict:
    return next(s for s in trace["steps"] if s["do"] == do)


def test_a_freshly_run_trace_has_the_form(demo):
    assert check_trace(demo) == []


def _mapped_access(t):
    return next(s for s in t["steps"] if s["do"] == "access" and s["mapped"])


BREAKAGES = [
    ("hugepfn_trace 2", lambda t: t.update(hugepfn_trace=2), "trace: hugepfn_trace: expected 1, got 2"),
    ("hugepfn_trace true", lambda t: t.update(hugepfn_trace=True), "trace: hugepfn_trace: expected 1, got True"),
    ("no thp", lambda t: t.pop("thp"), "trace: thp: expected a string, got None"),
    ("steps not a list", lambda t: t.update(steps={}), "trace: steps: expected a list, got {}"),
    ("index skipped", lambda t: t["steps"][1].update(index=7),
     "steps[1] (access): index: expected 2 (steps are numbered from 1), got 7"),
    ("access ret", lambda t: first(t, "access").update(ret="NOPAGE"),
     "steps[1] (access): ret: expected \"0\" or VM_FAULT_* names joined by '|', got 'NOPAGE'"),
    ("errno ret", lambda t: first(t, "mmap").update(ret=-22),
     "steps[0] (mmap): ret: expected 0 or a negative errno name such as \"-EINVAL\", got -22"),
    ("call order", lambda t: first(t, "access")["calls"][0].update(order=12),
     "steps[1] (access).calls[0]: expected {order: 0|9|18, ret: VM_FAULT_*}, got {'order': 12, "
     "'ret': 'VM_FAULT_NOPAGE'}"),
    ("upper-case hex", lambda t: _mapped_access(t)["mapped"].update(va="0x7F0000000000"),
     "steps[1] (access).mapped: va: expected a lowercase hex string such as 0x1f000, got '0x7F0000000000'"),
    ("level", lambda t: _mapped_access(t)["mapped"].update(level="p4d"),
     "steps[1] (access).mapped: level: expected pud, pmd or pte, got 'p4d'"),
    ("no mapped", lambda t: first(t, "access").pop("mapped"),
     "steps[1] (access): mapped: missing (null when nothing maps the address)"),
    ("log", lambda t: first(t, "mmap").update(log="x"), "steps[0] (mmap): log: expected a list of strings"),
    ("kind field missing", lambda t: first(t, "mmap").pop("addr"),
     "steps[0] (mmap): addr: missing (a field of 'mmap')"),
    ("kind field type", lambda t: first(t, "mmap").update(pid="4242"),
     "steps[0] (mmap): pid: expected an integer, got '4242'"),
    ("kind field hex", lambda t: first(t, "mmap").update(length=1 << 30),
     "steps[0] (mmap): length: expected a lowercase hex string, got 1073741824"),
    ("summary key", lambda t: t["summary"].update(abc={"pud": 0, "pmd": 0, "pte": 0, "faults": 0}),
     "summary[abc]: the key must be a pid (decimal digits)"),
    ("summary count", lambda t: t["summary"]["4242"].update(pte=-1),
     "summary[4242]: pte: expected a count >= 0, got -1"),
]


@pytest.mark.parametrize("change, problem", [(b[1], b[2]) for b in BREAKAGES], ids=[b[0] for b in BREAKAGES])
def test_each_breakage_is_one_line_naming_the_place(demo, change, problem):
    broken = copy.deepcopy(demo)
    change(broken)
    assert check_trace(broken) == [problem]


SIGNALS = [
    ({"tid": 1, "signo": "SIGUSR1", "delivered": True}, "signo: expected one of SIGBUS, SIGSEGV, SIGKILL, got 'SIGUSR1'"),
    ({"tid": 1, "signo": "SIGBUS", "code": "SEGV_MAPERR", "addr": "0x1000", "delivered": True},
     "code: a SIGBUS has one of BUS_ADRERR, BUS_MCEERR_AR, BUS_MCEERR_AO, got 'SEGV_MAPERR'"),
    ({"tid": 1, "signo": "SIGBUS", "code": "BUS_MCEERR_AR", "addr": 4096, "delivered": True},
     "addr: expected a lowercase hex string such as 0x1f000, got 4096"),
    ({"tid": 1, "signo": "SIGKILL", "code": "BUS_MCEERR_AO", "delivered": True}, "a SIGKILL carries no code or addr"),
    ({"tid": "1", "signo": "SIGKILL", "delivered": True}, "tid: expected an integer, got '1'"),
    ({"tid": 1, "signo": "SIGSEGV", "code": "SEGV_ACCERR", "addr": "0x1000", "addr_lsb": "12", "delivered": True},
     "addr_lsb: expected an integer, got '12'"),
    ({"tid": 1, "signo": "SIGKILL"}, "delivered: expected true or false, got None"),
    ({"tid": 1, "signo": "SIGBUS", "addr": "0x1000", "delivered": True},
     "without a code, a SIGBUS carries no code or addr"),
]


@pytest.mark.parametrize("signal, problem", SIGNALS, ids=range(len(SIGNALS)))
def test_signals_have_names_codes_and_hex_addresses(demo, signal, problem):
    broken = copy.deepcopy(demo)
    first(broken, "mmap")["signals"] = [signal]
    assert check_trace(broken) == [f"steps[0] (mmap).signals[0]: {problem}"]


def test_every_known_signal_shape_passes(demo):
    fine = copy.deepcopy(demo)
    first(fine, "mmap")["signals"] = [
        {"tid": 1, "signo": "SIGBUS", "code": "BUS_MCEERR_AO", "addr": "0x7f0000001000", "addr_lsb": 12,
         "delivered": False},
        {"tid": 1, "signo": "SIGSEGV", "code": "SEGV_MAPERR", "addr": "0x0", "delivered": True},
        {"tid": 1, "signo": "SIGKILL", "delivered": True},
        {"tid": 1, "signo": "SIGBUS", "delivered": True}]       # force_sig(SIGBUS): SI_KERNEL, no fields
    assert check_trace(fine) == []


def test_an_unknown_step_kind_is_checked_for_the_common_fields_only(demo):
    other = copy.deepcopy(demo)
    first(other, "mmap")["do"] = "future_kind"
    assert check_trace(other) == []


def test_not_an_object():
    assert check_trace([1, 2]) == ["trace: expected a JSON object, got list"]


def hugepfn(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, input=stdin, timeout=60)


def test_cli_and_python_m_entries(tmp_path, demo):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(demo))
    broken = copy.deepcopy(demo)
    broken["hugepfn_trace"] = 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    done = hugepfn("check-trace", str(good), str(bad))
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [f"{good}: trace ok", f"{bad}: trace: hugepfn_trace: expected 1, got 2",
                                        f"{bad}: 1 problem(s)"]
    module = subprocess.run([sys.executable, "-m", "hugepfn.host.trace_check", "-"], input=json.dumps(demo),
                            capture_output=True, text=True, timeout=60)
    assert (module.returncode, module.stdout, module.stderr) == (0, "-: trace ok\n", "")


def test_unreadable_input_is_one_line(tmp_path, monkeypatch):
    junk = tmp_path / "junk.json"
    junk.write_text("{nope")
    done = hugepfn("check-trace", str(junk))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"hugepfn check-trace: error: {junk}: not JSON: Expecting property name enclosed in "
                           "double quotes: line 1 column 2 (char 1)\n")
    done = hugepfn("check-trace", str(tmp_path / "missing.json"))
    assert (done.returncode, done.stderr) == (1, f"hugepfn check-trace: error: No such file or directory: "
                                                 f"{tmp_path / 'missing.json'}\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="not JSON: nested too deeply"):
        trace_check.load_trace(str(deep))
    monkeypatch.setattr(trace_check, "MAX_TRACE_BYTES", 1 << 20)     # a file just over the limit
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(ValueError, match=r"big.json: larger than 1 MiB; not read as a trace"):
        trace_check.load_trace(str(big))


def test_a_real_plain_sigbus_passes():
    """6.15 has no memory_failure for pfnmaps: a consumption ends in force_sig(SIGBUS), no fields."""
    from hugepfn.host.scenario import parse_scenario
    trace = run_scenario(parse_scenario({
        "kernel": "6.16", "device": [{"name": "D", "bars": [{"index": 0, "phys": 0x3800000000, "size": "1G"}]}],
        "process": [{"comm": "q", "pid": 10}],
        "step": [{"do": "mmap", "pid": 10, "device": "D", "region": 0, "length": "1G", "addr": 0x7F0000000000},
                 {"do": "poison", "device": "D", "region": 0, "offset": 0},
                 {"do": "access", "tid": 10, "addr": 0x7F0000000000}]})).to_json()
    assert trace["steps"][2]["signals"] == [{"tid": 10, "signo": "SIGBUS", "delivered": True}]
    assert check_trace(trace) == []
