"""No behaviour depends on import order: what a Machine can do is what its constructor is
given, and what scenarios can say is what hugepfn.host.scenario.wiring puts in the registry.

One interpreter imports the packages that used to register things as import side effects
(memory_failure, the served-device model, the nvgrace-gpu driver, the pytest plugin's host) in
every order, each time from scratch (hugepfn's modules dropped from sys.modules), then builds
machines and runs scenarios; every order must give the same results.  The 24 orders are split
over two interpreters running side by side."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

PACKAGES = ("hugepfn.host.memory_failure", "hugepfn.host.scenario.served", "hugepfn.host.drivers.nvgrace_gpu",
            "hugepfn.testing.host")

PROBE = textwrap.dedent('''
    import importlib, json, sys

    def fresh_import(order):
        for name in [n for n in sys.modules if n == "hugepfn" or n.startswith("hugepfn.")]:
            del sys.modules[name]
        for name in order:
            importlib.import_module(name)

    def observe():
        from hugepfn.host.drivers import PciBar
        from hugepfn.host.machine import Machine
        from hugepfn.host.scenario import run_scenario
        from hugepfn.host.scenario.wiring import default_registry
        from hugepfn.fixtures import SCENARIOS

        plain = Machine(kernel="7.0")
        m = Machine(kernel="7.0", policy="hard-offline")
        m.create_process(1, "q")
        nv = m.add_device("nv", "nvgrace-gpu", "0000:09:00.0", usemem=(0x4000000000, 1 << 30))
        m.add_device("bar", "vfio-pci", bars=[PciBar(2, 0x3800000000, 1 << 30)])
        m.mmap(1, "nv", 4, 0, 1 << 30, 0x7f0000000000)
        first = m.access(1, 0x7f0000000000)
        ret = m.memory_failure.memory_failure(0x4000123, 0, m.tasks.thread(1))
        after = m.access(1, 0x7f0000000000)
        registry = default_registry()
        return {
            "plain": [type(plain.memory_failure).__name__, plain.memory_failure.config_memory_failure,
                      plain.hw_poison is None, sorted(plain.drivers.names())],
            "nvgrace": [[s.region for s in nv.registered], first.calls, ret, after.calls, m.klog.lines()],
            "kinds": list(registry.step_kinds), "device_fields": [f.name for f in registry.device_fields],
            "finishers": [f.__name__ for f in registry.finishers],
            "wrappers": [w.__name__ for w in registry.step_wrappers],
            "traces": [run_scenario(SCENARIOS / f"{name}.toml").to_json()
                       for name in ("poison-hard-offline", "poison-split", "nvgrace_7_0")],
        }

    results = {}
    for order in json.loads(sys.argv[1]):
        fresh_import(order)
        results[" ".join(order)] = observe()
    print(json.dumps(results))
''')


def test_every_import_order_gives_the_same_machines_registries_and_traces():
    orders = list(itertools.permutations(PACKAGES))
    probes = [subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(orders[half::2])], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for half in (0, 1)]
    results = {}
    for probe in probes:
        out, err = probe.communicate(timeout=600)
        assert probe.returncode == 0, err
        results.update(json.loads(out))
    assert len(results) == 24
    first = next(iter(results.values()))
    assert first["plain"][:3] == ["MemoryFailure", True, True]
    assert first["finishers"] == ["poison_summary", "close_all"]
    assert first["nvgrace"][0] == [4] and first["nvgrace"][2] == 0
    differing = [order for order, seen in results.items() if seen != first]
    assert differing == []
