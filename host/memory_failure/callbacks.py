"""pfn_to_vma_pgoff callbacks and the pfn_address_space of a device region.

* ``nvgrace_literal`` — nvgrace-gpu's callback as merged for v7.0: it checks the lower bound
  only, so a pfn beyond a VMA's end still yields a pgoff; vma_address() then fails and
  memory_failure_pfn SIGKILLs the owner ("forcibly killing") — docs/kernel-reference.md: nvgrace-gpu, open questions.
  The driver model in host/drivers/nvgrace_gpu.py implements this one.
* ``nvgrace_fixed`` — the same plus the upper-bound check the commit message describes:
  a pfn past the VMA's end is -EFAULT, so that VMA is simply skipped.
* ``vfio_pci`` — for the scenario's `register` step on a plain vfio-pci BAR (no upstream driver
  registers BARs; this is what a variant driver would write): same rules, BAR instead of memregion.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from ..mm.constants import PAGE_SHIFT, VFIO_PCI_PGOFF_MASK, VFIO_PCI_PGOFF_SHIFT
from ..mm.pfn_space import PfnAddressSpace
from .regions import region_extent

if TYPE_CHECKING:
    from ..mm.vma import Vma

Callback = Callable[["Vma", int], "tuple[int, int | None]"]
VARIANTS = ("literal", "fixed")


def _region_pages(device, index: int) -> tuple[int, int] | None:
    """(first pfn, pages) of region ``index``."""
    extent = region_extent(device, index)
    return None if extent is None else (extent[0], max(extent[1] >> PAGE_SHIFT, 1))


_ENOENT = (-errno.ENOENT, None)
_EINVAL = (-errno.EINVAL, None)
_EFAULT = (-errno.EFAULT, None)
_UNSEEN = object()


def make_callback(device, ops_attr: str, fixed: bool) -> Callback:
    """A pfn_to_vma_pgoff that recognises ``device``'s VMAs by the ops table in ``ops_attr``."""
    # region index -> (first pfn, pages) or None; a device's regions are fixed when it is
    # created, and memory_failure_pfn calls this once per VMA of the mapping
    regions: dict[int, tuple[int, int] | None] = {}

    def pfn_to_vma_pgoff(vma: "Vma", pfn: int) -> tuple[int, int | None]:
        if vma.vm_ops is not getattr(device, ops_attr):
            return _ENOENT
        vm_pgoff = vma.vm_pgoff
        index = vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
        pages = regions.get(index, _UNSEEN)
        if pages is _UNSEEN:
            pages = regions[index] = _region_pages(device, index)
        if pages is None:
            return _EINVAL
        start, n = pages
        if not start <= pfn < start + n:
            return _EFAULT
        pfn_off = pfn - start
        vma_off = vm_pgoff & VFIO_PCI_PGOFF_MASK
        if pfn_off < vma_off:
            return _EFAULT
        if fixed and pfn_off - vma_off >= vma.nr_pages:
            return _EFAULT
        return 0, vm_pgoff + (pfn_off - vma_off)

    def pgoffs(vmas, pfn: int) -> list[int | None]:
        """[pgoff, or None where it fails] of pfn_to_vma_pgoff(vma, pfn) for each of ``vmas``: the
        same answers without a call per VMA (memory_failure_pfn asks about every VMA of the
        mapping; tests/memory_failure check both agree)."""
        ops = getattr(device, ops_attr)
        out = []
        for vma in vmas:
            pgoff = None
            if vma.vm_ops is ops:
                vm_pgoff = vma.vm_pgoff
                index = vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
                pages = regions.get(index, _UNSEEN)
                if pages is _UNSEEN:
                    pages = regions[index] = _region_pages(device, index)
                if pages is not None:
                    pfn_off = pfn - pages[0]
                    vma_off = vm_pgoff & VFIO_PCI_PGOFF_MASK
                    if vma_off <= pfn_off < pages[1] and not (
                            fixed and pfn_off - vma_off >= (vma.vm_end - vma.vm_start) >> PAGE_SHIFT):
                        pgoff = vm_pgoff + (pfn_off - vma_off)
            out.append(pgoff)
        return out

    pfn_to_vma_pgoff.__name__ = f"pfn_to_vma_pgoff_{'fixed' if fixed else 'literal'}"
    pfn_to_vma_pgoff.pgoffs = pgoffs
    return pfn_to_vma_pgoff


def pgoffs_one_by_one(callback: Callback, vmas, pfn: int) -> list[int | None]:
    """``pgoffs`` for a callback without one (nvgrace-gpu's own): a call per VMA."""
    return [None if ret else pgoff for ret, pgoff in (callback(vma, pfn) for vma in vmas)]


def region_space(device, index: int, variant: str = "literal") -> PfnAddressSpace | None:
    """The pfn_address_space describing region ``index`` of ``device`` with a callback of the
    given variant; None if the region has no memory."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown callback variant {variant!r} (choose from {', '.join(VARIANTS)})")
    pages = _region_pages(device, index)
    if pages is None:
        return None
    start, n = pages
    is_nv_region = getattr(device, "memregion", None) is not None and device.memregion(index) is not None
    ops_attr = "nv_vm_ops" if is_nv_region else "vm_ops"
    if is_nv_region and variant == "literal":
        callback = device.pfn_to_vma_pgoff          # the driver's own (literal) callback
    else:
        callback = make_callback(device, ops_attr, variant == "fixed")
    return PfnAddressSpace(start, start + n - 1, device.mapping, callback, owner=device, region=index)
