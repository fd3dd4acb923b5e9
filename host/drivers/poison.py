"""Building blocks for drivers that learn of poison (docs/driver-authors.md).

* PoisonRecord: the pfns a driver has been told are bad (a PoisonSet), and how often its fault
  handlers refused them; VfioPciCoreDevice.record_poison creates it on the first report and the
  memory-failure model sees it (summaries, repair, collapse).
* pgoff_callback: a pfn_to_vma_pgoff for a device region (the v7.0 callback), recognising the
  driver's VMAs by the vm_operations table its mmap installs; ``fixed`` adds the upper-bound
  check the merged v7.0 variant driver's callback lacks (docs/kernel-reference.md: open questions).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from ..memory_failure.poison_set import PoisonSet
from ..mm.constants import PAGE_SHIFT, VFIO_PCI_PGOFF_MASK, VFIO_PCI_PGOFF_SHIFT

if TYPE_CHECKING:
    from ..mm.vma import Vma, VmOperations
    from .vfio_pci_core import VfioPciCoreDevice

Callback = Callable[["Vma", int], "tuple[int, int | None]"]
CALLBACK_VARIANTS = ("literal", "fixed")


class PoisonRecord:
    """What one driver remembers about poison: ``pfns`` (PoisonSet), ``hwpoison_faults`` (order-0
    faults answered VM_FAULT_HWPOISON) and ``fallbacks`` (huge faults refused for poison)."""

    def __init__(self, device: "VfioPciCoreDevice") -> None:
        self.device = device
        self.pfns = PoisonSet()
        self.hwpoison_faults = 0
        self.fallbacks = 0

    @property
    def poison(self) -> PoisonSet:
        return self.pfns

    def record(self, pfn: int) -> bool:
        """Remember ``pfn``; False if it was known."""
        return self.pfns.add(pfn)

    def forget(self, pfn: int) -> bool:
        """The device reported ``pfn`` repaired: it may be mapped (huge) again."""
        return self.pfns.discard(pfn)

    def __repr__(self) -> str:
        return f"<PoisonRecord {self.device.name}: {len(self.pfns)} pfns>"


_ENOENT = (-errno.ENOENT, None)
_EINVAL = (-errno.EINVAL, None)
_EFAULT = (-errno.EFAULT, None)
_UNSEEN = object()


def region_pages(device: "VfioPciCoreDevice", index: int) -> tuple[int, int] | None:
    """(first pfn, pages) of region ``index`` of ``device`` (at least one page), or None."""
    extent = device.region_extent(index)
    return None if extent is None else (extent[0], max(extent[1] >> PAGE_SHIFT, 1))


def pgoff_callback(device: "VfioPciCoreDevice", ops: "VmOperations | None", fixed: bool) -> Callback:
    """A pfn_to_vma_pgoff for ``device``: a VMA whose vm_ops is not ``ops`` -> -ENOENT; its region
    has no memory -> -EINVAL; the pfn outside that region or before the VMA's start -> -EFAULT
    (``fixed``: or at/after its end); else the file page vm_pgoff + (pfn offset - VMA offset)."""
    # region index -> (first pfn, pages) or None; a device's regions are fixed when it is
    # created, and memory_failure_pfn calls this once per VMA of the mapping
    regions: dict[int, tuple[int, int] | None] = {}

    def pfn_to_vma_pgoff(vma: "Vma", pfn: int) -> tuple[int, int | None]:
        if vma.vm_ops is not ops:
            return _ENOENT
        vm_pgoff = vma.vm_pgoff
        index = vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
        pages = regions.get(index, _UNSEEN)
        if pages is _UNSEEN:
            pages = regions[index] = region_pages(device, index)
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
        mapping; tests/memory_failure check both agree).  The answer is worked out again only
        when a VMA's vm_pgoff differs from the previous VMA's; per VMA then, only the fixed
        variant's bound on its length."""
        out = []
        append = out.append
        last_pgoff = -1
        pgoff = first = None    # the answer for a VMA with vm_pgoff last_pgoff; its offset in the VMA
        for vma in vmas:
            if vma.vm_ops is not ops:
                append(None)
                continue
            vm_pgoff = vma.vm_pgoff
            if vm_pgoff != last_pgoff:      # (VMAs of one BAR share their vm_pgoff, usually)
                last_pgoff = vm_pgoff
                pgoff = None
                index = vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
                pages = regions.get(index, _UNSEEN)
                if pages is _UNSEEN:
                    pages = regions[index] = region_pages(device, index)
                if pages is not None:
                    pfn_off, vma_off = pfn - pages[0], vm_pgoff & VFIO_PCI_PGOFF_MASK
                    if vma_off <= pfn_off < pages[1]:
                        pgoff, first = vm_pgoff + (pfn_off - vma_off), pfn_off - vma_off
            if pgoff is not None and fixed and first >= (vma.vm_end - vma.vm_start) >> PAGE_SHIFT:   # nr_pages
                append(None)
            else:
                append(pgoff)
        return out

    pfn_to_vma_pgoff.__name__ = f"pfn_to_vma_pgoff_{'fixed' if fixed else 'literal'}"
    pfn_to_vma_pgoff.pgoffs = pgoffs
    return pfn_to_vma_pgoff


def check_variant(variant: str) -> str:
    if variant not in CALLBACK_VARIANTS:
        raise ValueError(f"unknown callback variant {variant!r} (choose from {', '.join(CALLBACK_VARIANTS)})")
    return variant
