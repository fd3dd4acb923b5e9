"""poison-aware-gpu: vfio-pci plus a huge_fault that never maps a huge block holding poison.

Peter Xu's proposal for huge pfnmaps (the huge-pfnmap series, August 2024), prototyped as a
variant driver: the driver registers its BARs for memory failure when it is opened;
when memory_failure tells it a pfn went bad, it remembers the pfn and zaps that page (the PUD
or PMD leaf over it goes whole); its huge_fault then answers FALLBACK for any block holding a
bad pfn, so the clean pages map again at a smaller order, and VM_FAULT_HWPOISON for the bad
page itself.  Not upstream behaviour.
"""
from __future__ import annotations

from hugepfn.host.drivers import VfioPciCoreDevice
from hugepfn.host.memory_failure import PoisonSet
from hugepfn.host.mm import PAGE_SHIFT, PAGE_SIZE, VM_FAULT_FALLBACK, VM_FAULT_HWPOISON
from hugepfn.host.scenario.fields import Field

PCI_NUM_BARS = 6


class PoisonAwareGpu(VfioPciCoreDevice):
    driver_name = "poison-aware-gpu"                    # the prefix of its log lines
    # a scenario may say `zap_on_poison = false`: remember the pfn but leave the mappings
    fields = (Field("zap_on_poison", "bool", required=False, default=True),)

    def __init__(self, machine, pdev, name=None, zap_on_poison=True):
        super().__init__(machine, pdev, name)
        self.bad_pfns = PoisonSet()
        self.zap_on_poison = zap_on_poison

    def open_device(self):
        """Register every BAR it can map for memory failure (-EOPNOTSUPP before 6.19: go on without)."""
        ret = super().open_device()
        for index in range(PCI_NUM_BARS):
            space = self.pfn_address_space(index)       # its pfns, our pgoff callback and notification
            if space is not None and self.machine.register_pfn_address_space(space) == 0:
                self.registered.append(space)
        return ret

    def close_device(self):
        for space in self.registered:
            self.machine.unregister_pfn_address_space(space)
        self.registered.clear()
        super().close_device()

    def pfn_memory_failure(self, space, pfn):
        """memory_failure_pfn tells us ``pfn`` of ``space`` is bad."""
        self.bad_pfns.add(pfn)
        if not self.zap_on_poison:
            self.dev_info(f"pfn {pfn:#x} is poisoned: recorded")
            return "recorded"
        self.dev_info(f"pfn {pfn:#x} is poisoned: zapping its page")
        self.zap(self.pfn_file_offset(pfn), PAGE_SIZE)  # a file offset: BAR index << 40 | offset
        return "zapped"

    def huge_fault(self, vmf, order):
        vma = vmf.vma
        addr = vmf.address & -(PAGE_SIZE << order)
        pfn = self.vma_to_pfn(vma) + ((addr - vma.vm_start) >> PAGE_SHIFT)
        if self.bad_pfns.any_in(pfn, pfn + (1 << order)):
            # FALLBACK lets the clean pages of the block map at a smaller order; the bad page
            # itself (order 0) gets SIGBUS BUS_MCEERR_AR
            return VM_FAULT_FALLBACK if order else VM_FAULT_HWPOISON
        return super().huge_fault(vmf, order)


# for --driver-module poison_aware_gpu and `plugins = ["poison_aware_gpu"]` (not needed once installed)
HUGEPFN_DRIVERS = {"poison-aware-gpu": PoisonAwareGpu}
