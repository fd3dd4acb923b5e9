"""Where a device region's memory is: an nvgrace-gpu memregion (usemem/resmem) or a PCI BAR."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, VFIO_PCI_PGOFF_MASK, VFIO_PCI_PGOFF_SHIFT

if TYPE_CHECKING:
    from ..mm.vma import Vma


def region_extent(device, index: int) -> tuple[int, int] | None:
    """(first pfn, length in bytes) of region ``index``, or None (no such memory, I/O or empty BAR)."""
    memregion = getattr(device, "memregion", None)
    mem = memregion(index) if memregion is not None else None
    if mem is not None:
        return mem.start_pfn, mem.memlength
    bar = device.pdev.bars.get(index)
    if bar is None or bar.io or bar.size == 0:
        return None
    return bar.phys >> PAGE_SHIFT, bar.size


def region_pfn(device, index: int, offset: int) -> int | None:
    """pfn of byte ``offset`` of region ``index``, or None if outside it."""
    extent = region_extent(device, index)
    if extent is None or offset >= extent[1]:
        return None
    return extent[0] + (offset >> PAGE_SHIFT)


def vma_base_pfn(device, vma: "Vma") -> int | None:
    """pfn mapped at vma.vm_start, computed as the driver does (region start + VMA offset)."""
    extent = region_extent(device, vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT)
    return None if extent is None else extent[0] + (vma.vm_pgoff & VFIO_PCI_PGOFF_MASK)
