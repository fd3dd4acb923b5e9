"""Copying and moving page-table ranges: what fork (copy_page_range) and mremap
(move_page_tables) do to the page table of a VM_PFNMAP VMA, entries taken as they are.

copy_range follows copy_pud_range / copy_pmd_range / copy_pte_range: every non-empty slot of the
source in [start, end) is reproduced in the destination: a huge PUD or PMD leaf is copied whole
(copy_huge_pud / copy_huge_pmd; the range must cover it, as a VMA always does), a PMD or PTE table
is allocated in the destination even when it holds nothing in the range, and the present PTEs
of the range are copied one by one.

move_range follows move_page_tables (mm/mremap.c, x86-64 / arm64, which have HAVE_MOVE_PMD and
HAVE_MOVE_PUD), extent by extent from the low end:
* a huge PUD (PMD) leaf moves whole when the extent is the full 1 GiB (2 MiB) at both ends;
* a PMD (PTE) table moves whole, as one pointer, when the extent is the full 1 GiB (2 MiB) at
  both ends and the destination slot is empty (move_normal_pud / move_normal_pmd);
* otherwise the destination tables are allocated and the present PTEs move one by one
  (move_ptes); the emptied source tables stay (free_pgtables frees them with the old VMA).
A huge leaf that cannot move whole must have been split by the caller first (the kernel's
split_huge_pud / split_huge_pmd clear a special pfnmap leaf); finding one is a ValueError.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, PUD_SHIFT, PUD_SIZE
from .pagetable import INDEX_MASK, LinearPtes, PmdTable

if TYPE_CHECKING:
    from .pagetable import PageTable


def _check_range(start: int, end: int) -> None:
    if start % PAGE_SIZE or end % PAGE_SIZE or end < start:
        raise ValueError(f"page table range [{start:#x}, {end:#x}) is not page aligned")


def _extent(addr: int, end: int, size: int, other: int | None = None) -> int:
    """get_extent: bytes to the next ``size`` boundary of ``addr`` (and of ``other``), within end."""
    extent = min((addr | (size - 1)) + 1, end) - addr
    if other is not None:
        extent = min(extent, ((other | (size - 1)) + 1) - other)
    return extent


def _copy_entries(src_ptes, dst: "PageTable", addr: int, extent: int) -> None:
    """The present PTEs of [addr, addr + extent) (inside one PTE table) into ``dst``."""
    lo = (addr >> PAGE_SHIFT) & INDEX_MASK
    hi = lo + (extent >> PAGE_SHIFT)
    dst_ptes = dst.pte_alloc(addr)
    for i in range(lo, hi):
        entry = src_ptes[i]
        if entry:
            dst_ptes[i] = entry


def copy_range(src: "PageTable", dst: "PageTable", start: int, end: int) -> None:
    """Copy every leaf of ``src`` in [start, end) into ``dst`` as it is (fork of a pfnmap VMA)."""
    _check_range(start, end)
    addr = start
    while addr < end:
        extent = _extent(addr, end, PUD_SIZE)
        pud_idx = addr >> PUD_SHIFT
        table = src.pmd_tables.get(pud_idx)
        if table is None:
            pfn = src.pud_leaves.get(pud_idx)
            if pfn is not None:
                if extent != PUD_SIZE:
                    raise ValueError(f"PUD leaf at {pud_idx << PUD_SHIFT:#x} straddles [{start:#x}, {end:#x})")
                if pud_idx in dst.pmd_tables:
                    raise ValueError(f"destination PUD slot at {addr:#x} holds a table")
                dst.pud_leaves[pud_idx] = pfn
            addr += extent
            continue
        dst_table = dst.pmd_alloc(addr)
        pud_end = addr + extent
        while addr < pud_end:
            pmd_extent = _extent(addr, pud_end, PMD_SIZE)
            pmd_idx = addr >> PMD_SHIFT
            slot = pmd_idx & INDEX_MASK
            entry = table.leaves[slot]
            if entry:
                if pmd_extent != PMD_SIZE:
                    raise ValueError(f"PMD leaf at {pmd_idx << PMD_SHIFT:#x} straddles [{start:#x}, {end:#x})")
                if pmd_idx in dst_table.pte_tables:
                    raise ValueError(f"destination PMD slot at {addr:#x} holds a table")
                dst_table.leaves[slot] = entry
            else:
                ptes = table.pte_tables.get(pmd_idx)
                if ptes is not None:
                    if (type(ptes) is LinearPtes and pmd_extent == PMD_SIZE
                            and pmd_idx not in dst_table.pte_tables and not dst_table.leaves[slot]):
                        dst_table.pte_tables[pmd_idx] = LinearPtes(ptes.first, ptes.base_pfn)
                    else:
                        _copy_entries(ptes, dst, addr, pmd_extent)
            addr += pmd_extent


def move_range(pt: "PageTable", old_start: int, new_start: int, length: int) -> None:
    """Move the leaves of [old_start, old_start + length) to new_start (mremap)."""
    _check_range(old_start, old_start + length)
    _check_range(new_start, new_start + length)
    if new_start > old_start and new_start < old_start + length:
        raise ValueError("move_range: overlapping ranges can only move down (as execve's stack shift)")
    old, new, old_end = old_start, new_start, old_start + length
    while old < old_end:
        extent = _extent(old, old_end, PUD_SIZE, new)
        pud_idx, new_pud = old >> PUD_SHIFT, new >> PUD_SHIFT
        table = pt.pmd_tables.get(pud_idx)
        if table is None:
            if pud_idx in pt.pud_leaves:
                if extent != PUD_SIZE:
                    raise ValueError(f"PUD leaf at {pud_idx << PUD_SHIFT:#x} cannot move whole: split it first")
                if new_pud in pt.pmd_tables or new_pud in pt.pud_leaves:
                    raise ValueError(f"destination PUD slot at {new:#x} is not empty")
                pt.pud_leaves[new_pud] = pt.pud_leaves.pop(pud_idx)      # move_huge_pud
            old, new = old + extent, new + extent
            continue
        if extent == PUD_SIZE and new_pud not in pt.pmd_tables and new_pud not in pt.pud_leaves:
            del pt.pmd_tables[pud_idx]                                  # move_normal_pud
            pt.pmd_tables[new_pud] = _rekeyed(table, new_pud)
            old, new = old + extent, new + extent
            continue
        extent = _extent(old, old_end, PMD_SIZE, new)
        _move_pmd_extent(pt, table, old, new, extent)
        old, new = old + extent, new + extent


def _rekeyed(table: PmdTable, new_pud: int) -> PmdTable:
    """The same PMD table under another PUD slot (its PTE tables are keyed by global PMD index)."""
    first = new_pud << (PUD_SHIFT - PMD_SHIFT)
    moved = PmdTable()
    moved.leaves = table.leaves
    for pmd_idx, ptes in table.pte_tables.items():
        moved.pte_tables[first + (pmd_idx & INDEX_MASK)] = _relocated(ptes, first + (pmd_idx & INDEX_MASK))
    return moved


def _relocated(ptes, new_pmd: int):
    """A PTE table moved to another PMD slot (a LinearPtes remembers its first page index)."""
    if type(ptes) is LinearPtes:
        return LinearPtes(new_pmd << (PMD_SHIFT - PAGE_SHIFT), ptes.base_pfn)
    return ptes


def _move_pmd_extent(pt: "PageTable", table: PmdTable, old: int, new: int, extent: int) -> None:
    """One extent inside a PMD slot: the huge leaf or whole PTE table moves if it can, else PTEs."""
    pmd_idx, new_pmd = old >> PMD_SHIFT, new >> PMD_SHIFT
    slot = pmd_idx & INDEX_MASK
    entry = table.leaves[slot]
    new_table = pt.pmd_alloc(new)                                       # alloc_new_pmd
    new_slot = new_pmd & INDEX_MASK
    if entry:
        if extent != PMD_SIZE:
            raise ValueError(f"PMD leaf at {pmd_idx << PMD_SHIFT:#x} cannot move whole: split it first")
        if new_table.leaves[new_slot] or new_pmd in new_table.pte_tables:
            raise ValueError(f"destination PMD slot at {new:#x} is not empty")
        table.leaves[slot] = 0                                          # move_huge_pmd
        new_table.leaves[new_slot] = entry
        return
    ptes = table.pte_tables.get(pmd_idx)
    if ptes is None:
        return                                                          # pmd_none: nothing to move
    if extent == PMD_SIZE and not new_table.leaves[new_slot] and new_pmd not in new_table.pte_tables:
        del table.pte_tables[pmd_idx]                                   # move_normal_pmd
        new_table.pte_tables[new_pmd] = _relocated(ptes, new_pmd)
        return
    if type(ptes) is LinearPtes:
        ptes = table.pte_tables[pmd_idx] = ptes.to_table()
    dst = pt.pte_alloc(new)
    lo, new_lo = (old >> PAGE_SHIFT) & INDEX_MASK, (new >> PAGE_SHIFT) & INDEX_MASK
    for n in range(extent >> PAGE_SHIFT):                               # move_ptes
        entry = ptes[lo + n]
        if entry:
            ptes[lo + n] = 0
            dst[new_lo + n] = entry
