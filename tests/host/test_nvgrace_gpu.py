"""nvgrace-gpu (docs/kernel-reference.md: nvgrace-gpu): fake power-of-two BARs, mmap checks, generation 1 (PTEs at mmap,
vm_pgoff = pfn) vs generation 2 (own huge_fault and debug line), readiness after reset, v7.0
registration at open, and the pfn_to_vma_pgoff callback."""
import errno

import pytest

from hugepfn.host.drivers import PciBar
from hugepfn.host.drivers.nvgrace_gpu import NvgraceGpuDevice
from hugepfn.host.machine import Machine
from hugepfn.host.mm.constants import PMD_SIZE, PUD_SIZE, VM_ALLOW_ANY_UNCACHED, VM_PFNMAP
from hugepfn.host.mm.pagetable import Leaf

from .conftest import PID, VA, calls_named

USEMEM = (0x4000000000, 0x200600000)        # 8 GiB + 6 MiB
RESMEM = (0x3f00000000, 1 << 30)
NV = "nvgrace_gpu_vfio_pci 0000:09:00.0: "


def nv_machine(kernel="7.0", resmem=RESMEM, **kw):
    m = Machine(kernel=kernel, **kw)
    m.create_process(PID, "qemu", [PID, PID + 1])
    m.add_device("G", driver="nvgrace-gpu", bdf="0000:09:00.0", bars=[PciBar(0, 0x3000000000, 16 << 20)],
                 usemem=USEMEM, resmem=resmem)
    return m


def nvdbg(order, pfn, ret):
    return f"{NV}nvgrace_gpu_vfio_pci_huge_fault order = {order} pfn {pfn:#x}: {ret:#x}"


def test_fake_bar_sizes_are_powers_of_two():
    dev = nv_machine().device("G")
    assert dev.region_size(4) == 1 << 34 and dev.region_size(2) == 1 << 30
    assert dev.region_size(0) == 16 << 20
    assert nv_machine(resmem=(0x3f00000000, 0)).device("G").resmem is None


@pytest.mark.parametrize("kernel", ["6.12", "6.16", "6.19", "7.0"])
def test_mmap_size_check_uses_memlength_not_bar_size(kernel):
    m = nv_machine(kernel)
    assert m.mmap(PID, "G", 4, 0, USEMEM[1] + 0x1000, VA) == -errno.EINVAL
    assert m.mmap(PID, "G", 4, 0x1000, USEMEM[1], VA) == -errno.EINVAL
    assert m.mmap(PID, "G", 4, 0, 4 << 20, VA, shared=False) == -errno.EINVAL
    assert m.mmap(PID, "G", 4, 0, 4 << 20, VA) == 0


def test_generation1_maps_every_page_at_mmap_with_pgoff_equal_pfn():
    m = nv_machine("6.16")
    assert m.mmap(PID, "G", 2, 0x2000, 0x4000, VA) == 0
    vma = m.find_vma(PID, VA)
    assert vma.vm_pgoff == (RESMEM[0] >> 12) + 2 and vma.vm_ops is None
    assert vma.vm_flags & VM_ALLOW_ANY_UNCACHED and vma.vm_flags & VM_PFNMAP
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 4)
    r = m.access(PID, VA + 0x3004)
    assert (r.ret, r.calls, r.leaf) == (0, [], Leaf("pte", VA + 0x3000, (RESMEM[0] >> 12) + 5))
    assert m.klog.lines() == []


def test_generation1_vma_zapped_by_the_core_has_no_fault_handler():
    """vm_pgoff holds the pfn, which lies below the BAR range of the inode (ROM << 28): the core's
    zap of all BARs hits it, and the next access finds no ->fault: SIGBUS."""
    m = nv_machine("6.12")
    m.mmap(PID, "G", 4, 0, 0x2000, VA)
    m.device("G").config_write(4, 2, 0)
    assert [z.zapped.level for z in m.zap_journal] == ["pte"]
    r = m.access(PID, VA)
    assert r.ret_name == "VM_FAULT_SIGBUS" and r.calls == [] and r.signals[0].code_name == "BUS_ADRERR"


@pytest.mark.parametrize("kernel", ["6.19", "7.0"])
def test_generation2_huge_fault_and_debug_line(kernel):
    m = nv_machine(kernel)
    assert m.mmap(PID, "G", 4, 0, 4 << 30, VA) == 0
    vma = m.find_vma(PID, VA)
    assert vma.vm_pgoff == 4 << 28 and vma.vm_ops.name == "nvgrace_gpu_vfio_pci_mmap_ops"
    r = m.access(PID, VA + PUD_SIZE + 0x1234)
    assert calls_named(r) == [(18, "VM_FAULT_NOPAGE")]
    assert r.leaf == Leaf("pud", VA + PUD_SIZE, 0x4000000 + 0x40000)
    assert m.klog.lines() == [nvdbg(18, 0x4040000, 0x100)]


def test_generation2_misaligned_falls_back_and_prints():
    m = nv_machine()
    m.mmap(PID, "G", 4, 0x1000, 4 << 20, VA)          # region offset one page: pfn misaligned
    r = m.access(PID, VA)
    # the per-VMA-lock pass ends at ->fault with VM_FAULT_RETRY; the retry tries the PMD again
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"),
                              (0, "VM_FAULT_NOPAGE")]
    assert m.klog.lines() == [nvdbg(18, 0x4000001, 0x800), nvdbg(9, 0x4000001, 0x800),
                              nvdbg(9, 0x4000001, 0x800), nvdbg(0, 0x4000001, 0x100)]


def test_generation2_memory_disabled_goes_through_the_core_helper_and_prints():
    m = nv_machine()
    m.mmap(PID, "G", 4, 0, 4 << 30, VA)
    dev = m.device("G")
    dev.config_write(4, 2, 0)
    r = m.access(PID, VA)
    assert calls_named(r) == [(18, "VM_FAULT_SIGBUS")]
    assert m.klog.lines() == [nvdbg(18, 0x4000000, 0x2)]


def test_generation2_runtime_pm_is_a_silent_sigbus():
    m = nv_machine()
    m.mmap(PID, "G", 4, 0, 4 << 30, VA)
    m.device("G").pm_runtime_engaged = True
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_SIGBUS")]
    assert m.klog.lines() == []


def test_region_without_memregion_is_a_silent_sigbus():
    m = nv_machine()
    m.mmap(PID, "G", 4, 0, 4 << 30, VA)
    dev = m.device("G")
    dev.usemem = None                       # region gone behind the VMA's back
    vma = m.find_vma(PID, VA)
    from hugepfn.host.mm.fault import VmFaultCtx
    assert dev.nv_huge_fault(VmFaultCtx(vma, VA), 9) == 0x2
    assert m.klog.lines() == []


def test_other_regions_fall_through_to_the_core():
    m = nv_machine()
    assert m.mmap(PID, "G", 0, 0, 16 << 20, VA) == 0
    assert m.find_vma(PID, VA).vm_ops.name == "vfio_pci_mmap_ops"
    r = m.access(PID, VA)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_NOPAGE")]
    assert m.klog.lines()[-1] == "nvgrace_gpu_vfio_pci 0000:09:00.0: vfio_pci_mmap_huge_fault(,order = 9) " \
                                 "BAR 0 page offset 0x0: 0x100"


@pytest.mark.parametrize("ready_after,ret,clock", [(0, "VM_FAULT_NOPAGE", 0), (2500, "VM_FAULT_NOPAGE", 3000),
                                                  (31000, "VM_FAULT_SIGBUS", 31000)])
def test_readiness_check_after_reset(ready_after, ret, clock):
    m = nv_machine()
    m.mmap(PID, "G", 4, 0, 4 << 30, VA)
    dev = m.device("G")
    dev.pdev.ready_after_ms = ready_after
    m.access(PID, VA)
    assert dev.ioctl_reset() == 0 and dev.reset_done_flag
    m.klog.clear()
    r = m.access(PID, VA)
    assert r.ret_name == ret and m.clock.now_ms == clock
    if ret == "VM_FAULT_SIGBUS":
        assert m.klog.lines() == [] and dev.reset_done_flag       # early return: no debug line
    else:
        assert m.klog.lines() == [nvdbg(18, 0x4000000, 0x100)] and not dev.reset_done_flag


def test_readiness_check_with_memory_disabled_is_sigbus():
    m = nv_machine()
    m.mmap(PID, "G", 4, 0, 4 << 30, VA)
    dev = m.device("G")
    dev.ioctl_reset()
    dev.config_write(4, 2, 0)
    assert dev.check_device_ready() == -errno.EIO
    assert m.access(PID, VA).ret_name == "VM_FAULT_SIGBUS"


class Registry:
    def __init__(self, results):
        self.results = list(results)
        self.calls = []

    def register_pfn_address_space(self, space):
        self.calls.append(("register", space.region, space.start, space.last))
        return self.results.pop(0)

    def unregister_pfn_address_space(self, space):
        self.calls.append(("unregister", space.region))


def test_v7_registers_resmem_then_usemem_at_open():
    reg = Registry([0, 0])
    # the machine's memory-failure model is whatever its constructor is given: here a recorder
    m = nv_machine("7.0", memory_failure=lambda machine: reg)
    assert reg.calls == [("register", 2, 0x3f00000, 0x3f3ffff), ("register", 4, 0x4000000, 0x4200600 - 1)]
    m.device("G").close_device()
    assert reg.calls[2:] == [("unregister", 2), ("unregister", 4)]
    reg.calls.clear()
    nv_machine("6.19", memory_failure=lambda machine: reg)
    assert reg.calls == []
    reg.results = [0, -errno.EBUSY]
    with pytest.raises(OSError, match="EBUSY"):
        nv_machine("7.0", memory_failure=lambda machine: reg)
    assert reg.calls == [("register", 2, 0x3f00000, 0x3f3ffff), ("register", 4, 0x4000000, 0x42005ff),
                         ("unregister", 2)]


def test_registration_stub_eopnotsupp_is_tolerated():
    m = nv_machine("7.0", memory_failure=False)          # CONFIG_MEMORY_FAILURE=n: the stub
    assert m.device("G").is_open and m.device("G").registered == []


def test_pfn_to_vma_pgoff_callback():
    m = nv_machine("7.0")
    dev: NvgraceGpuDevice = m.device("G")
    m.mmap(PID, "G", 4, PMD_SIZE, 4 << 20, VA)
    m.mmap(PID, "G", 0, 0, 4 << 20, VA + PUD_SIZE)
    vma = m.find_vma(PID, VA)
    base = USEMEM[0] >> 12
    assert dev.pfn_to_vma_pgoff(vma, base + 0x200) == (0, (4 << 28) + 0x200)
    assert dev.pfn_to_vma_pgoff(vma, base + 0x1ff) == (-errno.EFAULT, None)        # below the VMA start
    assert dev.pfn_to_vma_pgoff(vma, base + 0x200000) == (0, (4 << 28) + 0x200000)  # beyond its end: no check
    assert dev.pfn_to_vma_pgoff(vma, base + (USEMEM[1] >> 12)) == (-errno.EFAULT, None)
    assert dev.pfn_to_vma_pgoff(m.find_vma(PID, VA + PUD_SIZE), base) == (-errno.ENOENT, None)
