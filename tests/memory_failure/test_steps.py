"""The poison step kinds through the scenario runner: results, extension kinds, one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hugepfn.host.scenario import ScenarioError, parse_scenario, run_scenario

REPO = Path(__file__).resolve().parents[2]

BASE = {"kernel": "7.0",
        "device": [{"name": "a", "bars": [{"index": 0, "phys": 0x3800000000, "size": "1G"}]},
                   {"name": "b", "bdf": "0000:02:00.0", "bars": [{"index": 0, "phys": 0x3800000000, "size": "1G"}]}],
        "process": [{"comm": "q", "pid": 10, "threads": [10, 11]}]}


def scenario(*steps, **top):
    return parse_scenario(dict(BASE, **top, step=list(steps)))


def steps_json(trace):
    return trace.to_json()["steps"]


def test_poison_register_memory_failure_unregister():
    t = run_scenario(scenario(
        {"do": "register", "device": "a", "region": 0},
        {"do": "mmap", "pid": 10, "device": "a", "region": 0, "length": "1G", "addr": 0x7f0000000000},
        {"do": "poison", "device": "a", "region": 0, "offset": "1G"},
        {"do": "poison", "device": "a", "region": 0, "offset": 0x5000},
        {"do": "access", "tid": 11, "addr": 0x7f0000005008},
        {"do": "consumption_guard", "threshold": 0},
        {"do": "unregister", "device": "a", "region": 0},
        {"do": "memory_failure", "pfn": 0x3800005, "flags": ["MF_ACTION_REQUIRED"], "current": 10}))
    s = steps_json(t)
    assert [x["ret"] for x in s] == [0, 0, "-EINVAL", 0, "VM_FAULT_NOPAGE", "-EINVAL", 0, "-EBUSY"]
    assert s[3]["pfn"] == "0x3800005"
    assert s[4]["consumed_poison"] is True
    assert s[4]["signals"] == [{"tid": 11, "signo": "SIGBUS", "code": "BUS_MCEERR_AR", "addr": "0x7f0000005000",
                                "addr_lsb": 12, "delivered": True}]
    assert s[4]["trace_events"] == ["ras:memory_failure_event: pfn 0x3800005: recovery action for non "
                                    "struct page pfn: Recovered"]
    assert s[7]["log"] == ["Memory failure: 0x3800005: recovery action for non struct page pfn: Ignored"]


def test_unregister_of_an_object_that_was_never_registered_is_a_one_line_error():
    sc = scenario({"do": "register", "device": "a", "region": 0},
                  {"do": "unregister", "device": "b", "region": 0})
    with pytest.raises(ScenarioError) as exc:
        run_scenario(sc)
    assert str(exc.value) == ("step 2 (unregister): unregister_pfn_address_space: [0x3800000, 0x383ffff] overlaps a "
                              "registered space that is not this object")


def test_register_callback_field_is_validated():
    with pytest.raises(ScenarioError) as exc:
        scenario({"do": "register", "device": "a", "region": 0, "callback": "loose"})
    assert str(exc.value) == "step 1 (register): callback: must be one of literal, fixed, got 'loose'"


def test_extension_kinds_run_from_a_file_through_the_cli(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('kernel = "7.0"\npolicy = "split"\n'
                 '[[device]]\nname = "g"\ndriver = "nvgrace-gpu"\nusemem = { memphys = 0x4000000000, memlength = "2G" }\n'
                 '[[process]]\ncomm = "q"\npid = 10\n'
                 '[[step]]\ndo = "unpoison_pfn"\npfn = 0x4000000\n'
                 '[[step]]\ndo = "madvise_hwpoison"\ntid = 10\naddr = 0x7f0000000000\nlength = "4K"\n'
                 '[[step]]\ndo = "collapse"\npid = 10\naddr = 0x7f0000000000\nlength = "1G"\n')
    out = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "run", str(f), "--json"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    import json
    s = json.loads(out.stdout)["steps"]
    assert [(x["do"], x["ret"]) for x in s] == [("unpoison_pfn", "-EIO"), ("madvise_hwpoison", "-EFAULT"),
                                                ("collapse", 0)]
    assert s[2]["collapsed"] == []
