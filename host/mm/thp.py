"""The eligibility gate for huge faults (thp_vma_allowable_orders, mm/huge_memory.c), docs/kernel-reference.md: eligibility.

Only "special" VMAs (VM_PFNMAP / VM_MIXEDMAP, i.e. device pfnmaps) are modelled: their
supported orders are PMD and PUD.  Whether the arch can then map a PUD is decided by
the fault cascade (create_huge_pud), not here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import PMD_ORDER, PUD_ORDER, VM_HUGEPAGE, VM_MIXEDMAP, VM_NOHUGEPAGE, VM_PFNMAP

if TYPE_CHECKING:
    from .vma import Vma

PMD_BIT = 1 << PMD_ORDER
PUD_BIT = 1 << PUD_ORDER
THP_ORDERS_ALL_SPECIAL = PMD_BIT | PUD_BIT


def thp_vma_allowable_orders(vma: "Vma", thp: str, sysfs_gates: bool, hw_thp: bool = True) -> int:
    """Bitmask of the huge orders a page fault may try on ``vma``.

    ``thp`` is /sys/kernel/mm/transparent_hugepage/enabled ("always"|"madvise"|"never");
    ``sysfs_gates`` says whether that setting applies to huge pfnmaps at all (it does up to
    at least v6.19; the mm-2026 tree bypasses it for VM_PFNMAP VMAs with ->huge_fault).
    """
    flags = vma.vm_flags
    mm = vma.vm_mm
    if not hw_thp or flags & VM_NOHUGEPAGE:
        return 0
    if mm.thp_disabled and not (mm.thp_except_advised and flags & VM_HUGEPAGE):
        return 0
    if not flags & (VM_PFNMAP | VM_MIXEDMAP):
        return 0        # anonymous / page-cache THP are outside the model
    if sysfs_gates and not (thp == "always" or (thp == "madvise" and flags & VM_HUGEPAGE)):
        return 0
    return THP_ORDERS_ALL_SPECIAL
