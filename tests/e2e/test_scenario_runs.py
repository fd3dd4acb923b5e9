"""run_scenario: a bundled scenario by name reproduces its golden trace; a user's own
scenario file with a served device gives the trace a test asserts on."""
from __future__ import annotations

import json
import textwrap

import pytest

from hugepfn.fixtures import TRACES
from hugepfn.testing import run_scenario


def test_bundled_demo_by_name_matches_its_golden_trace():
    trace = run_scenario("demo")
    assert trace.to_json() == json.loads((TRACES / "demo.json").read_text())


def test_own_served_scenario(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent("""
        kernel = "7.0"
        policy = "hard-offline"
        [[device]]
        name = "gpu"
        driver = "vfio-pci"
        serve = { profile = "tiny", backend = "python" }
        [[process]]
        comm = "app"
        pid = 100
        threads = [100]
        [[step]]
        do = "mmap"
        pid = 100
        device = "gpu"
        region = 2
        length = "64M"
        addr = 0x7f0000000000
        [[step]]
        do = "register"
        device = "gpu"
        region = 2
        [[step]]
        do = "inject"
        device = "gpu"
        bar = 2
        offset = 0x201000
        [[step]]
        do = "access"
        tid = 100
        addr = 0x7f0000201008
    """))
    trace = run_scenario(path)
    last = trace.steps[-1]
    assert last.ret == "VM_FAULT_HWPOISON"
    assert [s.to_json() for s in last.signals] == [{"tid": 100, "signo": "SIGBUS", "code": "BUS_MCEERR_AR",
                                                    "addr": "0x7f0000201008", "addr_lsb": 12, "delivered": True}]


def test_missing_scenario_names_the_bundled_ones():
    with pytest.raises(FileNotFoundError, match=r"no scenario file 'nope' \(bundled: .*poison-upstream"):
        run_scenario("nope")
