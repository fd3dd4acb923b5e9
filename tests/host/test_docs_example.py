"""The variant driver shown in docs/driver-authors.md works as the page says (the first python
block is executed as written), and doubles as the test of docs/kernel-reference.md: fault results for HWPOISON."""
import re
from pathlib import Path

import pytest

from hugepfn.host.drivers import PciBar, default_registry, unregister_driver
from hugepfn.host.machine import Machine
from hugepfn.host.mm.pagetable import Leaf

DOC = Path(__file__).resolve().parents[2] / "docs" / "driver-authors.md"
VA = 0x7f0000000000


@pytest.fixture(scope="module")
def driver_module():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    yield namespace
    unregister_driver("poison-aware-gpu")


def machine(arch="x86_64"):
    m = Machine(kernel="7.3", arch=arch, thp="always")
    m.create_process(4242, "qemu")
    gpu = m.add_device("gpu", driver="poison-aware-gpu", bars=[PciBar(0, 0x3800000000, 4 << 30)])
    assert m.mmap(4242, "gpu", region=0, offset=0, length=4 << 30, addr=VA) == 0
    return m, gpu


def test_the_documented_session(driver_module):
    assert default_registry().get("poison-aware-gpu") is driver_module["PoisonAwareGpu"]
    m, gpu = machine()
    assert m.access(4242, VA).leaf == Leaf("pud", VA, 0x3800000)
    gpu.mark_bad(0x3800123)
    assert m.tasks.process(4242).mm.pgtable.counts() == (0, 0, 0)
    r = m.access(4242, VA)
    assert r.calls == [(18, 0x800), (9, 0x800), (9, 0x800), (0, 0x100)] and r.leaf == Leaf("pte", VA, 0x3800000)
    # another 2 MiB block of the same GiB is clean: PMD (the PUD slot holds a table now)
    assert m.access(4242, VA + (4 << 20)).calls == [(9, 0x100)]
    mark = len(m.klog)
    r = m.access(4242, VA + 0x123456)
    assert (r.ret_name, r.leaf, r.calls) == ("VM_FAULT_HWPOISON", None, [(0, 0x10)])
    assert [s.to_json() for s in r.signals] == [{"tid": 4242, "signo": "SIGBUS", "code": "BUS_MCEERR_AR",
                                                 "addr": hex(VA + 0x123456), "addr_lsb": 12, "delivered": True}]
    # the variant answered before the core handler: no debug line, only the x86 MCE line
    assert m.klog.lines(mark) == [f"MCE: Killing qemu:4242 due to hardware memory corruption fault at "
                                  f"{VA + 0x123456:x}"]


def test_arm64_sends_the_same_signal_without_the_x86_log_line(driver_module):
    m, gpu = machine("arm64")
    gpu.mark_bad(0x3800000)
    r = m.access(4242, VA + 5)
    assert r.ret_name == "VM_FAULT_HWPOISON" and r.signals[0].addr_lsb == 12 and r.signals[0].addr == VA + 5
    assert not any(line.startswith("MCE:") for line in m.klog.lines())


def test_scenarios_can_use_a_registered_variant(driver_module, tmp_path):
    from hugepfn.host.scenario import run_scenario
    path = tmp_path / "s.toml"
    path.write_text('[[device]]\nname = "g"\ndriver = "poison-aware-gpu"\n'
                    'bars = [{ index = 0, phys = 0x3800000000, size = "1G" }]\n'
                    '[[process]]\ncomm = "q"\npid = 7\n'
                    '[[step]]\ndo = "mmap"\npid = 7\ndevice = "g"\nregion = 0\nlength = "1G"\naddr = 0x7f0000000000\n'
                    '[[step]]\ndo = "access"\ntid = 7\naddr = 0x7f0000000000\n')
    trace = run_scenario(path).to_json()
    assert trace["steps"][1]["log"] == ["poison-aware-gpu 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 18) "
                                        "BAR 0 page offset 0x0: 0x100"]
