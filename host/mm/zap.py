"""Zapping: zap a VMA range, and unmap_mapping_range over a file's i_mmap (docs/kernel-reference.md: zaps)."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .constants import PAGE_SHIFT, PAGE_SIZE, VM_PAT
from .pagetable import Zapped

if TYPE_CHECKING:
    from .mapping import AddressSpace
    from .vma import Vma

ULONG_MAX = (1 << 64) - 1


class VmaZap(NamedTuple):
    vma: "Vma"
    zapped: Zapped


_new_tuple = tuple.__new__


def zap_vma_range(vma: "Vma", start: int, end: int) -> list[VmaZap]:
    """Clear the page-table entries of [start, end) ∩ vma (huge leaves partly covered go whole)."""
    if start < vma.vm_start:
        start = vma.vm_start
    if end > vma.vm_end:
        end = vma.vm_end
    if end <= start:
        return []
    if vma.vm_flags & VM_PAT:           # unmap_single_vma: untrack_pfn(vma, 0, 0) before the zap
        vma.vm_mm.machine.memtypes.untrack(vma, ("zap_page_range_single",))
    zapped = vma.vm_mm.pgtable.zap_range(start, end)
    if not zapped:
        return []
    out = [_new_tuple(VmaZap, (vma, z)) for z in zapped]
    journal = getattr(vma.vm_mm.machine, "zap_journal", None)
    if journal is not None:
        journal.extend(out)
    return out


def unmap_mapping_pages(mapping: "AddressSpace", start: int, nr: int, even_cows: bool = False) -> list[VmaZap]:
    """Zap file pages [start, start + nr) in every VMA of ``mapping`` (nr 0: to the end)."""
    first = start
    last = start + nr - 1
    if last < first:
        last = ULONG_MAX
    out: list[VmaZap] = []
    if not mapping.mapped:
        return out
    for vma in mapping.vmas_overlapping(first, last):
        vba = vma.vm_pgoff
        vea = vba + vma.nr_pages - 1
        zba = max(first, vba)
        zea = min(last, vea)
        out += zap_vma_range(vma, vma.vm_start + ((zba - vba) << PAGE_SHIFT),
                             vma.vm_start + ((zea - vba + 1) << PAGE_SHIFT))
    return out


def unmap_mapping_range(mapping: "AddressSpace", holebegin: int, holelen: int,
                        even_cows: bool = False) -> list[VmaZap]:
    """unmap_mapping_range: byte offset and length in the file; holelen 0 = to the end.
    ``even_cows`` only matters for private COW pages, which pfnmaps do not have."""
    hba = holebegin >> PAGE_SHIFT
    hlen = (holelen + PAGE_SIZE - 1) >> PAGE_SHIFT
    return unmap_mapping_pages(mapping, hba, hlen, even_cows)
