"""Runs of first-touch PTE faults, for touch_range: a loop touching every page of a large
mapping without huge pages takes one fault per 4 KiB (16 Mi faults for 64 GiB).

Once a 2 MiB block's PTE table exists, handle_mm_fault for an empty PTE in it goes straight to
do_fault -> vm_ops->fault (docs/kernel-reference.md: fault cascade: a PMD slot holding a table never reaches huge_fault), so the
faults of the following empty PTEs are nothing but ``fault`` once per page.  A driver that offers
``VmOperations.fault_run`` takes such a run in one call with the same effects (entries, counters,
log lines); the run stops where an entry is present, at the table's end or at ``limit``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PUD_SHIFT
from .pagetable import INDEX_MASK, PTRS_PER_TABLE

if TYPE_CHECKING:
    from .vma import Vma


def fault_pte_run(vma: "Vma", addr: int, limit: int, write: bool) -> int:
    """Fault in the empty PTEs from ``addr`` (inside ``vma``) up to ``limit`` within
    its PTE table; returns how many faults were taken (each counted in mm.nr_faults), 0 when the
    driver has no fault_run, the PTE table does not exist yet or the driver declines."""
    ops = vma.vm_ops
    run = ops.fault_run if ops is not None else None
    if run is None:
        return 0
    mm = vma.vm_mm
    table = mm.pgtable.pmd_tables.get(addr >> PUD_SHIFT)
    ptes = table.pte_tables.get(addr >> PMD_SHIFT) if table is not None else None
    if ptes is None:
        return 0
    lo = (addr >> PAGE_SHIFT) & INDEX_MASK
    hi = min(PTRS_PER_TABLE, lo + ((min(limit, vma.vm_end) - addr + PAGE_SIZE - 1) >> PAGE_SHIFT))
    segment = ptes[lo:hi]
    n = len(segment)
    if segment.count(0) != n:           # stop at the first present entry
        n = next(i for i, entry in enumerate(segment) if entry)
    if n == 0:
        return 0
    done = run(vma, addr & PAGE_MASK, n, write)
    mm.nr_faults += done
    return done
