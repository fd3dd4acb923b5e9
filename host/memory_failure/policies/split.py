"""split (HGM-like, what no kernel does for pfnmaps): the leaf covering the poisoned page is
replaced in place by lower-level leaves so that only the poisoned 4 KiB becomes unmapped
(the idea of Jiaqi Yan's 2023 HGM RFC, seed 001, applied to a pfnmap).

A PUD leaf becomes a PMD table with 511 PMD leaves and one PTE table of 511 PTEs; a PMD leaf
becomes a PTE table of 511 PTEs; a PTE is simply cleared.  Clean pages keep their
translations, so they take no refault.  The driver also records the pfn (same fault filter as
hard-offline), so a later zap (reset, memory disable) does not bring a huge leaf back over it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PMD_SHIFT, PUD_SHIFT
from ...mm.pagetable import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, PmdTable, PageTable, Zapped
from ...mm.zap import VmaZap
from .base import PoisonPolicy, space_pgoff

if TYPE_CHECKING:
    from ...mm.pfn_space import PfnAddressSpace
    from ..core import MemoryFailure

PTRS = 1 << PMD_ORDER


def _pte_table_without(first_va: int, first_pfn: int, hole_va: int) -> dict[int, int]:
    """A full PTE table for the 2 MiB at ``first_va`` minus the entry of ``hole_va``."""
    base = first_va >> PAGE_SHIFT
    ptes = dict(zip(range(base, base + PTRS), range(first_pfn, first_pfn + PTRS)))
    del ptes[hole_va >> PAGE_SHIFT]
    return ptes


def split_leaf_around(pt: PageTable, addr: int) -> str | None:
    """Unmap only the 4 KiB page at ``addr``; returns the level of the leaf that covered it."""
    addr &= ~(PAGE_SIZE - 1)
    leaf = pt.lookup(addr)
    if leaf is None:
        return None
    pud_idx = addr >> PUD_SHIFT
    pmd_idx = addr >> PMD_SHIFT
    if leaf.level == LEVEL_PUD:
        del pt.pud_leaves[pud_idx]
        table = pt.pmd_tables[pud_idx] = PmdTable()
        first_pmd = leaf.va >> PMD_SHIFT
        for i in range(PTRS):
            if first_pmd + i == pmd_idx:
                table.pte_tables[pmd_idx] = _pte_table_without(pmd_idx << PMD_SHIFT, leaf.pfn + i * PTRS, addr)
            else:
                table.leaves[first_pmd + i] = leaf.pfn + i * PTRS
    elif leaf.level == LEVEL_PMD:
        table = pt.pmd_tables[pud_idx]
        del table.leaves[pmd_idx]
        table.pte_tables[pmd_idx] = _pte_table_without(leaf.va, leaf.pfn, addr)
    else:
        del pt.pmd_tables[pud_idx].pte_tables[pmd_idx][addr >> PAGE_SHIFT]
    return leaf.level


class SplitPolicy(PoisonPolicy):
    name = "split"
    records_poison = True

    def on_memory_failure(self, mf: "MemoryFailure", space: "PfnAddressSpace", pfn: int) -> str:
        if space.owner is not None:
            mf.driver_state(space.owner).record(pfn, space)
        pgoff = space_pgoff(space, pfn)
        if pgoff is None:
            return "split"
        journal = mf.machine.zap_journal
        for vma in space.mapping.vmas_overlapping(pgoff, pgoff):
            addr = vma.address_of(pgoff)
            if addr is None:
                continue
            if split_leaf_around(vma.vm_mm.pgtable, addr) is not None:
                journal.append(VmaZap(vma, Zapped(LEVEL_PTE, addr, PAGE_SIZE)))
        return "split"
