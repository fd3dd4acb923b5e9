"""split (HGM-like, what no kernel does for pfnmaps): the leaf covering the poisoned page is
replaced in place by lower-level leaves so that only the poisoned 4 KiB becomes unmapped
(the idea of Jiaqi Yan's RFC "PAGE_SIZE Unmapping in Memory Failure Recovery for HugeTLB Pages", Apr 2023, applied to a pfnmap).

A PUD leaf becomes a PMD table with 511 PMD leaves and one PTE table of 511 PTEs; a PMD leaf
becomes a PTE table of 511 PTEs; a PTE is simply cleared.  Clean pages keep their
translations, so they take no refault.  The driver also records the pfn (its fault handlers refuse it as
under hard-offline), so a later zap (reset, memory disable) does not bring a huge leaf back over it.
"""
from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PMD_SHIFT, PUD_SHIFT
from ...mm.pagetable import INDEX_MASK, LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, PmdTable, PageTable, Zapped
from ...mm.zap import VmaZap
from .base import PoisonPolicy, space_pgoff

if TYPE_CHECKING:
    from ...drivers.vfio_pci_core import VfioPciCoreDevice
    from ...mm.pfn_space import PfnAddressSpace

PTRS = 1 << PMD_ORDER


def _pte_table_without(first_pfn: int, hole_va: int) -> array:
    """A full PTE table mapping first_pfn, first_pfn + 1, ... minus the entry of ``hole_va``."""
    ptes = array("Q", range(first_pfn + 1, first_pfn + 1 + PTRS))     # entries hold pfn + 1
    ptes[(hole_va >> PAGE_SHIFT) & INDEX_MASK] = 0
    return ptes


def split_leaf_around(pt: PageTable, addr: int) -> str | None:
    """Unmap only the 4 KiB page at ``addr``; returns the level of the leaf that covered it."""
    addr &= ~(PAGE_SIZE - 1)
    leaf = pt.lookup(addr)
    if leaf is None:
        return None
    pud_idx = addr >> PUD_SHIFT
    pmd_idx = addr >> PMD_SHIFT
    slot = pmd_idx & INDEX_MASK
    if leaf.level == LEVEL_PUD:
        del pt.pud_leaves[pud_idx]
        table = pt.pmd_tables[pud_idx] = PmdTable()
        table.leaves = array("Q", range(leaf.pfn + 1, leaf.pfn + 1 + PTRS * PTRS, PTRS))
        table.leaves[slot] = 0
        table.pte_tables[pmd_idx] = _pte_table_without(leaf.pfn + slot * PTRS, addr)
    elif leaf.level == LEVEL_PMD:
        table = pt.pmd_tables[pud_idx]
        table.leaves[slot] = 0
        table.pte_tables[pmd_idx] = _pte_table_without(leaf.pfn, addr)
    else:
        pt.pte_alloc(addr)[(addr >> PAGE_SHIFT) & INDEX_MASK] = 0
    return leaf.level


def split_in_place(device: "VfioPciCoreDevice", space: "PfnAddressSpace", pfn: int) -> str:
    """Record ``pfn`` in ``device``'s poison record and, in every VMA mapping it, replace the
    covering leaf by smaller ones so that only its 4 KiB is unmapped."""
    device.record_poison(pfn)
    pgoff = space_pgoff(space, pfn)
    if pgoff is None:
        return "split"
    journal = device.machine.zap_journal
    for vma in space.mapping.vmas_overlapping(pgoff, pgoff):
        addr = vma.address_of(pgoff)
        if addr is None:
            continue
        if split_leaf_around(vma.vm_mm.pgtable, addr) is not None:
            journal.append(VmaZap(vma, Zapped(LEVEL_PTE, addr, PAGE_SIZE)))
    return "split"


class SplitPolicy(PoisonPolicy):
    name = "split"
    records_poison = True

    def failure(self, device: "VfioPciCoreDevice", space: "PfnAddressSpace", pfn: int) -> str:
        return split_in_place(device, space, pfn)
