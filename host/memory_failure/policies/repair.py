"""Repair and collapse.

Repair: memory that a write can fix (as DAX/PMEM badblocks can: Dan Williams on copy_safe(), May 2020) is reported
repaired by the device; the driver forgets the pfn, the hardware no longer machine-checks
on it, and the consumption counts for it restart.  Nothing is remapped by that alone.

Why a range stays small after repair (docs/kernel-reference.md: fault cascade): a huge attempt happens only when the
slot at that level is empty.  After hard-offline or split the poisoned 2 MiB is mapped by a
PTE table and its 1 GiB by a PMD table; zapping clears entries but keeps tables, so later
faults there never reach huge_fault(PMD) or huge_fault(PUD) again.  ``collapse`` is the
explicit operation that undoes this: for every 1 GiB (then 2 MiB) block of the range that
lies wholly inside one VMA, maps an order-aligned pfn block and holds no recorded poison, it
zaps the small entries and frees the table (as khugepaged's retract_page_tables does for file
THPs), so the next access installs a PUD (or PMD) leaf again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SHIFT, PMD_ORDER, PMD_SHIFT, PMD_SIZE, PUD_ORDER, PUD_SHIFT, PUD_SIZE
from ...mm.pagetable import LEVEL_PMD, LEVEL_PUD
from ...mm.zap import zap_vma_range

if TYPE_CHECKING:
    from ...mm.mm import MM
    from ..core import MemoryFailure


def repair_pfn(mf: "MemoryFailure", pfn: int) -> bool:
    """The device reports ``pfn`` repaired; True if the driver or the hardware had it poisoned."""
    known = mf.hardware.clear(pfn)
    for state in mf.drivers.values():
        known = state.forget(pfn) or known
    mf.guard.forget(pfn)
    mf.repaired_at[pfn] = len(mf.outcomes)          # earlier reports of it no longer count as poison
    return known


def _clean(mf: "MemoryFailure", device, pfn: int, order: int) -> bool:
    if pfn & ((1 << order) - 1):
        return False
    state = mf.drivers.get(id(device))
    if state is not None and state.poison.any_in(pfn, pfn + (1 << order)):
        return False
    return not mf.hardware.any_in(pfn, pfn + (1 << order))


def collapse(mf: "MemoryFailure", mm: "MM", start: int, end: int) -> list[tuple[str, int]]:
    """Retract page tables of clean blocks in [start, end) so huge leaves can come back.
    Returns (level that can be mapped again, VA) per retracted table."""
    from ...drivers.vfio_pci_core import VfioPciCoreDevice      # drivers build on this package

    pt = mm.pgtable
    out: list[tuple[str, int]] = []
    for vma in mm.vmas_in(start, end):
        device = vma.vm_private_data
        if not isinstance(device, VfioPciCoreDevice):
            continue
        base = device.vma_base_pfn(vma)
        if base is None:
            continue
        lo, hi = max(start, vma.vm_start), min(end, vma.vm_end)
        for pud_idx in range(lo >> PUD_SHIFT, ((hi - 1) >> PUD_SHIFT) + 1):
            pud_va = pud_idx << PUD_SHIFT
            table = pt.pmd_tables.get(pud_idx)
            if table is None:
                continue
            if (vma.vm_start <= pud_va and pud_va + PUD_SIZE <= vma.vm_end
                    and _clean(mf, device, base + ((pud_va - vma.vm_start) >> PAGE_SHIFT), PUD_ORDER)):
                zap_vma_range(vma, pud_va, pud_va + PUD_SIZE)
                del pt.pmd_tables[pud_idx]
                out.append((LEVEL_PUD, pud_va))
                continue
            for pmd_idx in sorted(table.pte_tables):
                pmd_va = pmd_idx << PMD_SHIFT
                if not (lo <= pmd_va + PMD_SIZE - 1 and pmd_va < hi):
                    continue
                if (vma.vm_start <= pmd_va and pmd_va + PMD_SIZE <= vma.vm_end
                        and _clean(mf, device, base + ((pmd_va - vma.vm_start) >> PAGE_SHIFT), PMD_ORDER)):
                    zap_vma_range(vma, pmd_va, pmd_va + PMD_SIZE)
                    del table.pte_tables[pmd_idx]
                    out.append((LEVEL_PMD, pmd_va))
    return out
