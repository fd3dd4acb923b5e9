"""The sparse 4-level page table of one mm: PUD (1 GiB), PMD (2 MiB) and PTE (4 KiB) leaves.

PGD and P4D levels always exist and are left implicit; a PUD slot holds either a huge
leaf or a PMD table, a PMD slot either a huge leaf or a PTE table.  Slots are keyed by
the address shifted by the level's shift (global indices), so the cost is one dict
entry per live entry, never per byte mapped: 1 TiB of PUD leaves is 1024 entries.
Leaves store the first pfn they map; all leaves are "special" pfnmap entries.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

from .constants import PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT

LEVEL_PUD = "pud"
LEVEL_PMD = "pmd"
LEVEL_PTE = "pte"
PTRS_PER_TABLE = 512


class Leaf(NamedTuple):
    level: str      # "pud" | "pmd" | "pte"
    va: int         # first address the leaf maps
    pfn: int        # first pfn it maps

    @property
    def size(self) -> int:
        return 1 << {LEVEL_PUD: PUD_SHIFT, LEVEL_PMD: PMD_SHIFT, LEVEL_PTE: PAGE_SHIFT}[self.level]

    def pfn_at(self, addr: int) -> int:
        return self.pfn + ((addr - self.va) >> PAGE_SHIFT)


_new_tuple = tuple.__new__     # builds a Leaf without NamedTuple.__new__'s Python-level call


class Zapped(NamedTuple):
    """A run of entries a zap cleared: [va, va + length) at one level."""
    level: str
    va: int
    length: int


class LinearPtes:
    """A full PTE table whose 512 entries map consecutive pfns (what remap_pfn_range builds),
    stored as two ints until something changes one entry; then it becomes a plain dict.
    Supports the dict operations the page table uses, so callers need not know."""
    __slots__ = ("first", "base_pfn", "_d")

    def __init__(self, first_page_idx: int, base_pfn: int) -> None:
        self.first = first_page_idx
        self.base_pfn = base_pfn
        self._d: dict[int, int] | None = None

    def _dict(self) -> dict[int, int]:
        if self._d is None:
            self._d = {self.first + i: self.base_pfn + i for i in range(PTRS_PER_TABLE)}
        return self._d

    def get(self, page_idx: int, default=None):
        if self._d is not None:
            return self._d.get(page_idx, default)
        i = page_idx - self.first
        return self.base_pfn + i if 0 <= i < PTRS_PER_TABLE else default

    def __contains__(self, page_idx: int) -> bool:
        return self.get(page_idx) is not None

    def __getitem__(self, page_idx: int) -> int:
        pfn = self.get(page_idx)
        if pfn is None:
            raise KeyError(page_idx)
        return pfn

    def __setitem__(self, page_idx: int, pfn: int) -> None:
        self._dict()[page_idx] = pfn

    def __delitem__(self, page_idx: int) -> None:
        del self._dict()[page_idx]

    def pop(self, page_idx: int, *default):
        return self._dict().pop(page_idx, *default)

    def __len__(self) -> int:
        return PTRS_PER_TABLE if self._d is None else len(self._d)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self):
        return iter(range(self.first, self.first + PTRS_PER_TABLE)) if self._d is None else iter(list(self._d))


class PmdTable:
    """The PMD table under one PUD slot: huge PMD leaves and PTE tables, by PMD index."""
    __slots__ = ("leaves", "pte_tables")

    def __init__(self) -> None:
        self.leaves: dict[int, int] = {}                 # pmd index -> pfn
        self.pte_tables: dict[int, dict[int, int] | LinearPtes] = {}  # pmd index -> {page index -> pfn}


class PageTable:
    """Sparse page table.  Public fields are read by the fault hot path directly.

    ``fail_allocs`` is fault injection: while it is N > 0, the next N page-table allocations of
    the fault path fail (the fault returns VM_FAULT_OOM), as pmd_alloc / pte_alloc can.
    """
    __slots__ = ("pud_leaves", "pmd_tables", "fail_allocs")

    def __init__(self) -> None:
        self.pud_leaves: dict[int, int] = {}         # pud index -> pfn
        self.pmd_tables: dict[int, PmdTable] = {}    # pud index -> PMD table
        self.fail_allocs = 0

    def alloc_fails(self) -> bool:
        """Consume one injected allocation failure, if any is pending."""
        if self.fail_allocs > 0:
            self.fail_allocs -= 1
            return True
        return False

    # -- queries ---------------------------------------------------------------------------
    def lookup(self, addr: int) -> Leaf | None:
        """The leaf mapping ``addr``, or None (on the access hot path)."""
        pud_idx = addr >> PUD_SHIFT
        pfn = self.pud_leaves.get(pud_idx)
        if pfn is not None:
            return _new_tuple(Leaf, (LEVEL_PUD, pud_idx << PUD_SHIFT, pfn))
        table = self.pmd_tables.get(pud_idx)
        if table is None:
            return None
        pmd_idx = addr >> PMD_SHIFT
        pfn = table.leaves.get(pmd_idx)
        if pfn is not None:
            return _new_tuple(Leaf, (LEVEL_PMD, pmd_idx << PMD_SHIFT, pfn))
        ptes = table.pte_tables.get(pmd_idx)
        if ptes is None:
            return None
        page_idx = addr >> PAGE_SHIFT
        pfn = ptes.get(page_idx)
        return None if pfn is None else _new_tuple(Leaf, (LEVEL_PTE, page_idx << PAGE_SHIFT, pfn))

    def pfn_at(self, addr: int) -> int | None:
        leaf = self.lookup(addr)
        return None if leaf is None else leaf.pfn_at(addr)

    def slot_state(self, addr: int, level: str) -> str:
        """"none", "leaf" or "table" for the PUD or PMD slot covering ``addr``."""
        pud_idx = addr >> PUD_SHIFT
        if level == LEVEL_PUD:
            if pud_idx in self.pud_leaves:
                return "leaf"
            return "table" if pud_idx in self.pmd_tables else "none"
        table = self.pmd_tables.get(pud_idx)
        if table is None:
            return "none"
        pmd_idx = addr >> PMD_SHIFT
        if pmd_idx in table.leaves:
            return "leaf"
        return "table" if pmd_idx in table.pte_tables else "none"

    def has_pte_table(self, addr: int) -> bool:
        return self.slot_state(addr, LEVEL_PMD) == "table"

    def counts(self) -> tuple[int, int, int]:
        """Live leaves per level: (pud, pmd, pte)."""
        pmd = pte = 0
        for table in self.pmd_tables.values():
            pmd += len(table.leaves)
            for ptes in table.pte_tables.values():
                pte += len(ptes)
        return len(self.pud_leaves), pmd, pte

    def nr_tables(self) -> tuple[int, int]:
        """(PMD tables, PTE tables) allocated."""
        return len(self.pmd_tables), sum(len(t.pte_tables) for t in self.pmd_tables.values())

    def leaves(self, start: int = 0, end: int = 1 << 64) -> Iterator[Leaf]:
        """Every leaf overlapping [start, end), in address order."""
        pud_lo, pud_hi = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        keys = sorted(k for k in (*self.pud_leaves, *self.pmd_tables) if pud_lo <= k <= pud_hi)
        for pud_idx in keys:
            pfn = self.pud_leaves.get(pud_idx)
            if pfn is not None:
                yield Leaf(LEVEL_PUD, pud_idx << PUD_SHIFT, pfn)
                continue
            table = self.pmd_tables[pud_idx]
            for pmd_idx in sorted((*table.leaves, *table.pte_tables)):
                pmd_va = pmd_idx << PMD_SHIFT
                if pmd_va + (1 << PMD_SHIFT) <= start or pmd_va >= end:
                    continue
                pfn = table.leaves.get(pmd_idx)
                if pfn is not None:
                    yield Leaf(LEVEL_PMD, pmd_va, pfn)
                    continue
                for page_idx in sorted(table.pte_tables[pmd_idx]):
                    va = page_idx << PAGE_SHIFT
                    if start <= va < end:
                        yield Leaf(LEVEL_PTE, va, table.pte_tables[pmd_idx][page_idx])

    # -- population (the insert helpers do the checks) ---------------------------------------
    def set_pud(self, addr: int, pfn: int) -> None:
        self.pud_leaves[addr >> PUD_SHIFT] = pfn

    def pmd_alloc(self, addr: int) -> PmdTable:
        """The PMD table under ``addr``'s PUD slot, allocated if the slot is empty."""
        pud_idx = addr >> PUD_SHIFT
        table = self.pmd_tables.get(pud_idx)
        if table is None:
            if pud_idx in self.pud_leaves:
                raise RuntimeError(f"PUD slot of {addr:#x} holds a leaf, not a table")
            table = self.pmd_tables[pud_idx] = PmdTable()
        return table

    def set_pmd(self, addr: int, pfn: int) -> None:
        self.pmd_alloc(addr).leaves[addr >> PMD_SHIFT] = pfn

    def pte_alloc(self, addr: int) -> dict[int, int]:
        table = self.pmd_alloc(addr)
        pmd_idx = addr >> PMD_SHIFT
        ptes = table.pte_tables.get(pmd_idx)
        if ptes is None:
            if pmd_idx in table.leaves:
                raise RuntimeError(f"PMD slot of {addr:#x} holds a leaf, not a table")
            ptes = table.pte_tables[pmd_idx] = {}
        return ptes

    def set_pte(self, addr: int, pfn: int) -> None:
        self.pte_alloc(addr)[addr >> PAGE_SHIFT] = pfn

    def set_pte_range(self, start: int, end: int, pfn: int) -> None:
        """PTEs for [start, end) -> pfn, pfn+1, ... (remap_pfn_range).  Whole 2 MiB blocks whose
        PMD slot is empty become LinearPtes, so the cost does not grow with the bytes mapped."""
        addr = start
        while addr < end:
            block_end = (addr | ((1 << PMD_SHIFT) - 1)) + 1
            table = self.pmd_alloc(addr)
            pmd_idx = addr >> PMD_SHIFT
            if addr == block_end - (1 << PMD_SHIFT) and block_end <= end and pmd_idx not in table.pte_tables \
                    and pmd_idx not in table.leaves:
                table.pte_tables[pmd_idx] = LinearPtes(addr >> PAGE_SHIFT, pfn)
            else:
                ptes = self.pte_alloc(addr)
                first = addr >> PAGE_SHIFT
                for page_idx in range(first, min(end, block_end) >> PAGE_SHIFT):
                    ptes[page_idx] = pfn + (page_idx - first)
            pfn += (min(end, block_end) - addr) >> PAGE_SHIFT
            addr = min(end, block_end)

    # -- zap (zap_pud_range / zap_pmd_range / zap_pte_range for a special pfnmap VMA) --------
    def zap_range(self, start: int, end: int) -> list[Zapped]:
        """Clear every entry in [start, end) (page aligned).

        A huge leaf the range only partly covers is cleared whole and nothing is installed
        in its place (split of a special huge entry, reference 3.2).  PTE tables stay
        allocated even when emptied.  Returns what was cleared, PTE runs coalesced.
        """
        out: list[Zapped] = []
        if end <= start:
            return out
        pud_lo, pud_hi = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        pud_leaves, pmd_tables = self.pud_leaves, self.pmd_tables
        if pud_lo == pud_hi and pud_leaves.pop(pud_lo, None) is not None:    # the common small zap of a PUD
            out.append(_new_tuple(Zapped, (LEVEL_PUD, pud_lo << PUD_SHIFT, 1 << PUD_SHIFT)))
            return out
        if pud_hi - pud_lo + 1 <= len(pud_leaves) + len(pmd_tables):
            slots = range(pud_lo, pud_hi + 1)
        else:   # a sparse table under a huge range: walk the entries, not the slots
            slots = sorted(k for k in (*pud_leaves, *pmd_tables) if pud_lo <= k <= pud_hi)
        for pud_idx in slots:
            if pud_leaves.pop(pud_idx, None) is not None:
                out.append(Zapped(LEVEL_PUD, pud_idx << PUD_SHIFT, 1 << PUD_SHIFT))
                continue
            table = pmd_tables.get(pud_idx)
            if table is not None:
                self._zap_pmd_table(table, max(start, pud_idx << PUD_SHIFT),
                                    min(end, (pud_idx + 1) << PUD_SHIFT), out)
        return out

    @staticmethod
    def _zap_pmd_table(table: PmdTable, start: int, end: int, out: list[Zapped]) -> None:
        leaves, pte_tables = table.leaves, table.pte_tables
        for pmd_idx in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
            if leaves.pop(pmd_idx, None) is not None:
                out.append(Zapped(LEVEL_PMD, pmd_idx << PMD_SHIFT, 1 << PMD_SHIFT))
                continue
            ptes = pte_tables.get(pmd_idx)
            if not ptes:
                continue
            lo = max(start, pmd_idx << PMD_SHIFT) >> PAGE_SHIFT
            hi = min(end, (pmd_idx + 1) << PMD_SHIFT) >> PAGE_SHIFT
            if type(ptes) is LinearPtes and ptes._d is None and lo <= ptes.first and hi >= ptes.first + PTRS_PER_TABLE:
                pte_tables[pmd_idx] = {}        # the whole linear table goes; the (now empty) table stays
                out.append(Zapped(LEVEL_PTE, ptes.first << PAGE_SHIFT, PTRS_PER_TABLE << PAGE_SHIFT))
                continue
            if hi - lo >= len(ptes):
                hit = sorted(p for p in ptes if lo <= p < hi)
            else:
                hit = [p for p in range(lo, hi) if p in ptes]
            run_start = prev = None
            for page_idx in hit:
                del ptes[page_idx]
                if prev is not None and page_idx == prev + 1:
                    prev = page_idx
                    continue
                if run_start is not None:
                    out.append(Zapped(LEVEL_PTE, run_start << PAGE_SHIFT, (prev - run_start + 1) << PAGE_SHIFT))
                run_start = prev = page_idx
            if run_start is not None:
                out.append(Zapped(LEVEL_PTE, run_start << PAGE_SHIFT, (prev - run_start + 1) << PAGE_SHIFT))

    # -- freeing tables (munmap's free_pgtables) ---------------------------------------------
    def free_tables(self, start: int, end: int, floor: int, ceiling: int) -> None:
        """Free page tables of [start, end) whose whole span lies in [floor, ceiling).

        Called after the range was zapped and no VMA remains in [floor, ceiling); mirrors
        free_pgd_range, which keeps a table a neighbouring VMA may still use.
        """
        if end <= start:
            return
        for pud_idx in range(start >> PUD_SHIFT, ((end - 1) >> PUD_SHIFT) + 1):
            table = self.pmd_tables.get(pud_idx)
            if table is None:
                continue
            for pmd_idx in list(table.pte_tables):
                pmd_va = pmd_idx << PMD_SHIFT
                if (pmd_va + (1 << PMD_SHIFT) > start and pmd_va < end and pmd_va >= floor
                        and pmd_va + (1 << PMD_SHIFT) <= ceiling):
                    del table.pte_tables[pmd_idx]
            pud_va = pud_idx << PUD_SHIFT
            if (not table.leaves and not table.pte_tables and pud_va >= floor
                    and pud_va + (1 << PUD_SHIFT) <= ceiling):
                del self.pmd_tables[pud_idx]
