"""The poison record a driver keeps under a recording policy, and its poison-aware fault
handlers (Peter Xu's rule, ref 2.3 rules 2-3):

* huge_fault(order > 0): FALLBACK when [pfn, pfn + 2^order) holds a recorded pfn
  (never HWPOISON: a non-FALLBACK result ends the fault, clean pages would get SIGBUS);
* fault / huge_fault(order 0) on a recorded pfn: VM_FAULT_HWPOISON -> SIGBUS BUS_MCEERR_AR, lsb 12;
* anything else: the driver's own handler, unchanged.

The filter is installed on the device the first time a pfn is recorded, by replacing the
device's vm_operations (vfio-pci: ``vm_ops``; nvgrace-gpu: ``nv_vm_ops``) and the ops of the
VMAs already using them — the hook the drivers offer for ops tables (nvgrace's
pfn_to_vma_pgoff recognises its VMAs by that same object, so identity stays consistent).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SHIFT, PAGE_SIZE, VFIO_PCI_PGOFF_SHIFT
from ...mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_HWPOISON
from ...mm.vma import VmOperations
from ..poison_set import PoisonSet
from ..regions import vma_base_pfn

if TYPE_CHECKING:
    from ...mm.fault import VmFaultCtx
    from ...mm.pfn_space import PfnAddressSpace
    from ...mm.vma import Vma
    from ..core import MemoryFailure

ULONG_MASK = (1 << 64) - 1
OPS_ATTRIBUTES = ("nv_vm_ops", "vm_ops")        # nvgrace-gpu's own table first, then the core's


class DriverPoison:
    def __init__(self, mf: "MemoryFailure", device) -> None:
        self.mf = mf
        self.device = device
        self.poison = PoisonSet()
        self.hwpoison_faults = 0            # order-0 faults answered with VM_FAULT_HWPOISON
        self.fallbacks = 0                  # huge faults turned into FALLBACK by recorded poison
        self._installed: dict[str, tuple[VmOperations, VmOperations]] = {}   # attr -> (orig, filtered)

    # -- record -------------------------------------------------------------------------------
    def record(self, pfn: int, space: "PfnAddressSpace | None" = None) -> bool:
        self.install()
        return self.poison.add(pfn)

    def forget(self, pfn: int) -> bool:
        """The device reported ``pfn`` repaired: it may be mapped (huge) again."""
        return self.poison.discard(pfn)

    # -- fault filter ------------------------------------------------------------------------------
    def install(self) -> None:
        dev = self.device
        for attr in OPS_ATTRIBUTES:
            orig = getattr(dev, attr, None)
            if not isinstance(orig, VmOperations) or attr in self._installed:
                continue
            filtered = VmOperations(orig.name, fault=self._make_fault(orig),
                                    huge_fault=self._make_huge_fault(orig) if orig.huge_fault else None)
            self._installed[attr] = (orig, filtered)
            setattr(dev, attr, filtered)
            for vma in dev.mapping:
                if vma.vm_ops is orig:
                    vma.vm_ops = filtered

    def base_pfn(self, vma: "Vma") -> int | None:
        return vma_base_pfn(self.device, vma)

    def _debug(self, vmf: "VmFaultCtx", order: int, addr: int, pfn: int, ret: int) -> None:
        """The driver's own dynamic-debug line for the result the filter returns."""
        dev = self.device
        if not dev.klog.dyndbg:
            return
        vma = vmf.vma
        if hasattr(dev, "_fmt_nv_fault") and getattr(dev, "memregion")(vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT):
            dev.klog.debug_ratelimited("nvgrace_gpu_vfio_pci_huge_fault", dev._fmt_nv_fault, order, pfn, ret)
            return
        if dev.profile.vfio_alignment == "page":
            pgoff = vmf.pgoff - vma.vm_pgoff
        else:
            pgoff = ((addr - vma.vm_start) & ULONG_MASK) >> PAGE_SHIFT
        dev.klog.debug_ratelimited("vfio_pci_mmap_huge_fault", dev._fmt_huge_fault, order,
                                  vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT, pgoff, ret)

    def _make_huge_fault(self, orig: VmOperations):
        poison = self.poison
        inner = orig.huge_fault

        def huge_fault(vmf: "VmFaultCtx", order: int) -> int:
            if poison:
                vma = vmf.vma
                base = self.base_pfn(vma)
                if base is not None:
                    if order:
                        addr = vmf.address & -(PAGE_SIZE << order)
                        pfn = base + ((addr - vma.vm_start) >> PAGE_SHIFT)
                        if poison.any_in(pfn, pfn + (1 << order)):
                            self.fallbacks += 1
                            self._debug(vmf, order, addr, pfn & ULONG_MASK, VM_FAULT_FALLBACK)
                            return VM_FAULT_FALLBACK
                    else:
                        ret = self._order0(vmf, base)
                        if ret:
                            return ret
            return inner(vmf, order)
        return huge_fault

    def _make_fault(self, orig: VmOperations):
        inner = orig.fault

        def fault(vmf: "VmFaultCtx") -> int:
            if self.poison:
                base = self.base_pfn(vmf.vma)
                if base is not None:
                    ret = self._order0(vmf, base)
                    if ret:
                        return ret
            return inner(vmf)
        return fault

    def _order0(self, vmf: "VmFaultCtx", base: int) -> int:
        vma = vmf.vma
        pfn = base + ((vmf.address - vma.vm_start) >> PAGE_SHIFT)
        if pfn not in self.poison:
            return 0
        self.hwpoison_faults += 1
        self._debug(vmf, 0, vmf.address, pfn, VM_FAULT_HWPOISON)
        owner = vma.vm_mm.owner
        if owner is not None:
            self.mf.consumed_by_fault(owner, pfn)
        return VM_FAULT_HWPOISON
