"""The example driver through every way hugepfn offers: installed through its entry point, from
Python, in a scenario run by `hugepfn run` and `hugepfn compare`, and under the pytest plugin
with poison injected into a served device.  The driver's memory BAR is BAR 2 throughout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hugepfn.host.drivers import PciBar, default_registry
from hugepfn.host.machine import Machine
from hugepfn.host.mm import VM_FAULT_FALLBACK, VM_FAULT_HWPOISON, VM_FAULT_NOPAGE, Leaf
from hugepfn.host.scenario import ScenarioError, parse_scenario
from poison_aware_gpu import PoisonAwareGpu

HERE = Path(__file__).resolve().parents[1]
SCENARIO = HERE / "scenarios" / "poison-aware.toml"
VA = 0x7F0000000000
BAR2_PHYS = 0x3800000000             # BAR 2: 4 GiB at pfn 0x3800000
GiB = 1 << 30


def hugepfn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True)


def test_the_entry_point_makes_it_an_installed_driver():
    assert default_registry().get("poison-aware-gpu") is PoisonAwareGpu


def machine(**driver_args) -> tuple[Machine, PoisonAwareGpu]:
    m = Machine(kernel="7.0")
    m.create_process(4242, "qemu")
    gpu = m.add_device("gpu", driver="poison-aware-gpu", bars=[PciBar(2, BAR2_PHYS, 4 * GiB)], **driver_args)
    assert m.mmap(4242, "gpu", region=2, offset=0, length=4 * GiB, addr=VA) == 0
    return m, gpu


def test_from_python_a_report_zaps_the_gib_and_the_refault_avoids_the_bad_page():
    m, gpu = machine()
    assert [(s.region, s.start, s.last) for s in gpu.registered] == [(2, 0x3800000, 0x38FFFFF)]
    assert m.access(4242, VA).leaf == Leaf("pud", VA, 0x3800000)
    assert m.memory_failure.memory_failure(0x3800123) == 0            # a kworker's report
    assert 0x3800123 in gpu.bad_pfns
    assert m.tasks.process(4242).mm.pgtable.counts() == (0, 0, 0)     # the PUD went whole
    assert m.memory_failure.outcomes[-1].actions == ["zapped"]
    r = m.access(4242, VA)                    # a clean page of the poisoned GiB and 2 MiB
    assert r.calls == [(18, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK),
                       (0, VM_FAULT_NOPAGE)]
    assert r.leaf == Leaf("pte", VA, 0x3800000)
    assert m.access(4242, VA + (4 << 20)).calls == [(9, VM_FAULT_NOPAGE)]    # a clean 2 MiB: a PMD
    r = m.access(4242, VA + 0x123456)
    assert (r.ret, r.leaf, r.calls) == (VM_FAULT_HWPOISON, None, [(0, VM_FAULT_HWPOISON)])
    assert [s.to_json() for s in r.signals] == [{"tid": 4242, "signo": "SIGBUS", "code": "BUS_MCEERR_AR",
                                                 "addr": hex(VA + 0x123456), "addr_lsb": 12, "delivered": True}]


def test_zap_on_poison_false_keeps_the_mapping():
    m, gpu = machine(zap_on_poison=False)
    m.access(4242, VA)
    m.memory_failure.memory_failure(0x3800123)
    assert m.memory_failure.outcomes[-1].actions == ["recorded"]
    assert m.tasks.process(4242).mm.pgtable.counts() == (1, 0, 0)
    assert m.klog.lines()[-2] == "poison-aware-gpu 0000:01:00.0: pfn 0x3800123 is poisoned: recorded"


def test_a_scenario_checks_its_field_like_a_built_in_one():
    data = {"device": [{"name": "g", "driver": "poison-aware-gpu", "zap_on_poison": "yes"}]}
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data)
    assert str(exc.value) == "device[0]: zap_on_poison: expected true or false, got 'yes'"
    spec = parse_scenario({"device": [{"name": "g", "driver": "poison-aware-gpu"}]}).devices[0]
    assert spec.driver_args == {"zap_on_poison": True}


def test_hugepfn_run_checks_every_expectation_of_the_scenario():
    run = hugepfn("run", str(SCENARIO), "--json")
    assert (run.returncode, run.stderr) == (0, "")
    trace = json.loads(run.stdout)
    inject = trace["steps"][2]
    assert "poison-aware-gpu 0000:01:00.0: pfn 0x100401 is poisoned: zapping its page" in inject["log"]
    assert inject["zapped"] == [{"pid": 4242, "va": "0x7f0000400000", "length": "0x200000", "level": "pmd"}]
    assert trace["summary"] == {"4242": {"pud": 0, "pmd": 1, "pte": 1, "faults": 4}}


def test_hugepfn_compare_runs_it_under_every_policy():
    out = hugepfn("compare", str(SCENARIO), "--json")
    assert (out.returncode, out.stderr) == (0, "")
    summaries = json.loads(out.stdout)
    # the driver decides what to do about poison itself: every policy gives the same picture
    for policy in ("upstream", "hard-offline", "split"):
        assert {k: summaries[policy][k] for k in ("pud", "pmd", "pte", "faults", "unreachable_bytes", "signals")} \
            == {"pud": 0, "pmd": 1, "pte": 1, "faults": 4, "unreachable_bytes": 2 << 20, "signals": 2}


def test_the_pytest_plugin_binds_it_to_a_served_device_and_poison_reaches_it(hugepfn_host):
    host = hugepfn_host(kernel="7.0", driver="poison-aware-gpu")
    gpu = host.devices["gpu"]
    assert host.registrations == {}                   # the driver registered its BARs itself when opened
    assert [s.region for s in gpu.host_device.registered] == [0, 2, 4]     # registers, memory, MSI-X
    proc = host.spawn(4242, "qemu")
    bar = proc.mmap_bar(gpu, 2)
    assert bar.access(0x400000).leaf.level == "pmd"
    result = host.poison(gpu, bar=2, offset=0x401000)
    pfn = host.pfn(gpu, 2, 0x401000)
    assert result.pfns == [pfn] and pfn in gpu.host_device.bad_pfns
    assert proc.leaf(bar.va(0x400000)) is None            # its 2 MiB was zapped
    r = bar.access(0x400000)
    assert [(o, ret) for o, ret in r.calls] == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (0, VM_FAULT_NOPAGE)]
    r = bar.access(0x401000)
    assert r.ret == VM_FAULT_HWPOISON and r.signals[0].code_name == "BUS_MCEERR_AR"
