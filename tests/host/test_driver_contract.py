"""Variant drivers: found by name through one registry (entry points, driver modules, scenario
plugins, register_driver); their declared fields checked like built-in ones; a handler that
breaks the vm_fault_t contract named with its order and address; errors one line each."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hugepfn.host.driver_error import DriverError
from hugepfn.host.drivers import DriverRegistry, PciBar, VfioPciCoreDevice, default_registry
from hugepfn.host.drivers.nvgrace_gpu import NvgraceGpuDevice
from hugepfn.host.machine import Machine
from hugepfn.host.scenario import ScenarioError, parse_scenario, run_scenario

REPO = Path(__file__).resolve().parents[2]
VA = 0x7F0000000000
HOW = "add one with --driver-module MODULE, a scenario's plugins = [\"MODULE\"] or the hugepfn.drivers entry point"


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


DRIVER_MODULE = '''
    from hugepfn.host.drivers import VfioPciCoreDevice
    from hugepfn.host.scenario.fields import Field


    class NoneGpu(VfioPciCoreDevice):
        """Breaks the contract: huge_fault returns None at the PMD level."""
        driver_name = "none-gpu"
        fields = (Field("broken_order", "int", required=False, default=9),)

        def __init__(self, machine, pdev, name=None, broken_order=9):
            super().__init__(machine, pdev, name)
            self.broken_order = broken_order

        def huge_fault(self, vmf, order):
            if order == self.broken_order:
                return None
            return super().huge_fault(vmf, order)


    HUGEPFN_DRIVERS = {"none-gpu": NoneGpu}
'''


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    write_module(tmp_path, "contract_drivers", DRIVER_MODULE)
    write_module(tmp_path, "no_drivers", "X = 1\n")
    write_module(tmp_path, "not_a_driver", "HUGEPFN_DRIVERS = {'thing': object}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_hugepfn_s_own_drivers_come_from_its_entry_points():
    registry = DriverRegistry()
    assert {"vfio-pci", "nvgrace-gpu"} <= set(registry.names())
    assert registry.get("vfio-pci") is VfioPciCoreDevice and registry.get("nvgrace-gpu") is NvgraceGpuDevice


def test_an_unknown_driver_lists_the_installed_ones():
    installed = ", ".join(default_registry().names())
    with pytest.raises(DriverError) as exc:
        Machine().add_device("g", "nouveau")
    assert str(exc.value) == f"unknown driver 'nouveau' (installed: {installed}; {HOW})"
    with pytest.raises(ScenarioError) as exc:
        parse_scenario({"device": [{"name": "g", "driver": "nouveau"}]})
    assert str(exc.value) == f"device[0]: driver: unknown driver 'nouveau' (installed: {installed}; {HOW})"


def test_driver_modules_that_cannot_serve_are_one_line_errors(module_dir):
    registry = DriverRegistry()
    with pytest.raises(DriverError) as exc:
        registry.load_module("no_such_module_here", "--driver-module")
    assert str(exc.value) == "--driver-module: cannot import 'no_such_module_here': No module named 'no_such_module_here'"
    with pytest.raises(DriverError) as exc:
        registry.load_module("no_drivers", "--driver-module")
    assert str(exc.value) == ("--driver-module: no_drivers declares no drivers "
                              "(give it HUGEPFN_DRIVERS = {\"name\": DriverClass})")
    with pytest.raises(DriverError) as exc:
        registry.load_module("not_a_driver", "--driver-module")
    assert str(exc.value) == ("driver 'thing' from --driver-module: <class 'object'> is not a subclass of "
                              "VfioPciCoreDevice")


def test_a_name_cannot_be_taken_twice():
    registry = DriverRegistry(entry_points=False)

    class A(VfioPciCoreDevice):
        pass

    class B(VfioPciCoreDevice):
        pass
    registry.register("a", A)
    registry.register("a", A)                       # the same class again: nothing changes
    with pytest.raises(DriverError, match="driver 'a' is already .*A; register_driver cannot make it another class"):
        registry.register("a", B)
    child = registry.child()
    with pytest.raises(DriverError):
        child.register("a", B)


def scenario(**device) -> dict:
    return {"kernel": "7.0", "device": [{"name": "g", "bars": [{"index": 2, "phys": 0x3800000000, "size": "1G"}],
                                         **device}],
            "process": [{"comm": "q", "pid": 7}],
            "step": [{"do": "mmap", "pid": 7, "device": "g", "region": 2, "length": "1G", "addr": VA},
                     {"do": "access", "tid": 7, "addr": VA}]}


def test_plugins_of_a_scenario_are_its_own(module_dir):
    data = scenario(driver="none-gpu", broken_order=18)
    s = parse_scenario({**data, "plugins": ["contract_drivers"]})
    assert s.devices[0].driver_args == {"broken_order": 18}
    assert "none-gpu" in s.drivers and "none-gpu" not in default_registry()
    with pytest.raises(ScenarioError, match=r"device\[0\]: driver: unknown driver 'none-gpu'"):
        parse_scenario(data)                        # another scenario, without the plugin
    with pytest.raises(ScenarioError) as exc:
        parse_scenario({**data, "plugins": ["no_drivers"]})
    assert str(exc.value) == ("scenario: plugins: no_drivers declares no drivers "
                              "(give it HUGEPFN_DRIVERS = {\"name\": DriverClass})")


def test_declared_fields_are_checked_and_reported_like_built_in_ones(module_dir):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario({**scenario(driver="none-gpu", broken_order="nine"), "plugins": ["contract_drivers"]})
    assert str(exc.value) == "device[0]: broken_order: expected an integer, got 'nine'"
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario(usemem={"memphys": 0, "memlength": 1}))
    assert str(exc.value) == "device[0]: usemem: only nvgrace-gpu devices have usemem"
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario(driver="nvgrace-gpu", usemem={"memphys": 0}))
    assert str(exc.value) == "device[0].usemem: memlength: missing"
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario(driver="nvgrace-gpu", pgoff_callback="loose"))
    assert str(exc.value) == "device[0]: pgoff_callback: must be one of literal, fixed, got 'loose'"
    s = parse_scenario(scenario(driver="nvgrace-gpu", usemem={"memphys": "0x4000000000", "memlength": "1G"}))
    assert s.devices[0].driver_args == {"usemem": (0x4000000000, 1 << 30), "resmem": None,
                                        "pgoff_callback": "literal"}


def test_a_handler_returning_a_non_int_is_named_with_its_order_and_address(module_dir):
    from contract_drivers import NoneGpu

    registry = DriverRegistry()
    registry.register("none-gpu", NoneGpu)
    m = Machine(kernel="7.0", drivers=registry)
    m.create_process(7, "q")
    m.add_device("g", "none-gpu", bars=[PciBar(2, 0x3800000000, 1 << 30)])
    assert m.mmap(7, "g", 2, 0, 2 << 20, VA) == 0          # 2 MiB: the PUD attempt falls back
    with pytest.raises(DriverError) as exc:
        m.access(7, VA + 0x1234)
    assert str(exc.value) == ("driver none-gpu: huge_fault(order 9) at 0x7f0000001234 returned None, not a "
                              "vm_fault_t (an int such as VM_FAULT_NOPAGE or VM_FAULT_FALLBACK)")
    m.add_device("h", "none-gpu", bars=[PciBar(2, 0x3900000000, 1 << 30)], broken_order=18)
    assert m.mmap(7, "h", 2, 0, 1 << 30, VA + (1 << 30)) == 0
    with pytest.raises(DriverError, match=r"^driver none-gpu: huge_fault\(order 18\) at 0x7f0040000000 returned None"):
        m.access(7, VA + (1 << 30))


def hugepfn(*args: str, path: Path) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env=env)



def test_run_and_compare_take_driver_modules(module_dir):
    path = module_dir / "s.toml"
    path.write_text('kernel = "7.0"\n[[device]]\nname = "g"\ndriver = "none-gpu"\n'
                    'bars = [{ index = 2, phys = 0x3800000000, size = "1G" }]\n'
                    '[[process]]\ncomm = "q"\npid = 7\n'
                    '[[step]]\ndo = "mmap"\npid = 7\ndevice = "g"\nregion = 2\nlength = "2M"\naddr = 0x7f0000000000\n'
                    '[[step]]\ndo = "access"\ntid = 7\naddr = 0x7f0000000000\n')
    out = hugepfn("run", str(path), path=module_dir)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("hugepfn run: error: ") and "unknown driver 'none-gpu'" in out.stderr
    out = hugepfn("run", str(path), "--driver-module", "contract_drivers", path=module_dir)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("hugepfn run: error: driver none-gpu: huge_fault(order 9) at 0x7f0000000000 returned "
                          "None, not a vm_fault_t (an int such as VM_FAULT_NOPAGE or VM_FAULT_FALLBACK)\n")
    out = hugepfn("compare", str(path), "--driver-module", "no_drivers", path=module_dir)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("hugepfn compare: error: --driver-module: no_drivers declares no drivers "
                          "(give it HUGEPFN_DRIVERS = {\"name\": DriverClass})\n")
