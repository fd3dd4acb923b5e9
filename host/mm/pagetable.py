"""The sparse 4-level page table of one mm: PUD (1 GiB), PMD (2 MiB) and PTE (4 KiB) leaves.

PGD and P4D levels always exist and are left implicit; a PUD slot holds either a huge
leaf or a PMD table, a PMD slot either a huge leaf or a PTE table.  As in the kernel, a table
is 512 eight-byte entries: an ``array("Q")`` of 4 KiB, indexed by ``index & INDEX_MASK``, each
entry holding ``pfn + 1`` (0 is pte_none / pmd_none / pud_none, an all-zero entry as in the
kernel; the +1 keeps pfn 0 mappable).  So a PTE leaf costs 8 bytes and a fully used PMD or PUD
table 8 bytes per leaf.  Tables hang off dicts keyed by global indices (address >> level
shift): ``pmd_tables`` by PUD index, a PMD table's ``pte_tables`` by PMD index, and the PUD
entries (``pud_leaves``) in one 512-entry table per 512 GiB.  The fault hot path reads these
fields directly.  All leaves are "special" pfnmap entries.
"""
from __future__ import annotations

from array import array
from typing import Iterator, NamedTuple

from .constants import PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT

LEVEL_PUD = "pud"
LEVEL_PMD = "pmd"
LEVEL_PTE = "pte"
PTRS_PER_TABLE = 512
INDEX_MASK = PTRS_PER_TABLE - 1            # pte_index / pmd_index / pud_index of a global index
TABLE_SHIFT = 9                            # global index >> TABLE_SHIFT: which table holds it
_ZEROS = bytes(8 * PTRS_PER_TABLE)
_LEVEL_SIZE = {LEVEL_PUD: 1 << PUD_SHIFT, LEVEL_PMD: 1 << PMD_SHIFT, LEVEL_PTE: 1 << PAGE_SHIFT}


def new_table() -> array:
    """An empty 512-entry table (all entries none)."""
    return array("Q", _ZEROS)


class Leaf(NamedTuple):
    level: str      # "pud" | "pmd" | "pte"
    va: int         # first address the leaf maps
    pfn: int        # first pfn it maps

    @property
    def size(self) -> int:
        return _LEVEL_SIZE[self.level]

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
    stored as two ints.  Read-only with the table's entry encoding (``ptes[i]`` is pfn + 1, never
    0); the page table swaps it for a real table (``to_table``) before changing an entry."""
    __slots__ = ("first", "base_pfn")

    def __init__(self, first_page_idx: int, base_pfn: int) -> None:
        self.first = first_page_idx
        self.base_pfn = base_pfn

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < PTRS_PER_TABLE:
            raise IndexError(i)
        return self.base_pfn + i + 1

    def count(self, value: int) -> int:
        return 0 if value == 0 else int(self.base_pfn < value <= self.base_pfn + PTRS_PER_TABLE)

    def to_table(self) -> array:
        return array("Q", range(self.base_pfn + 1, self.base_pfn + 1 + PTRS_PER_TABLE))


def present(table) -> int:
    """Entries in use in a table (array or LinearPtes)."""
    return PTRS_PER_TABLE - table.count(0)


class PmdTable:
    """The PMD table under one PUD slot: huge PMD leaves (``leaves``, by pmd index & INDEX_MASK)
    and PTE tables (``pte_tables``, by global PMD index)."""
    __slots__ = ("leaves", "pte_tables")

    def __init__(self) -> None:
        self.leaves = new_table()
        self.pte_tables: dict[int, array | LinearPtes] = {}


class PudLeaves:
    """The PUD-level huge leaves, by global PUD index, as PUD tables: one 512-entry table per
    512 GiB (``tables``, by PUD index >> TABLE_SHIFT).  A dict-like view (``in``, get, set, del,
    pop, len, ascending iteration) for the callers that are not on the fault hot path."""
    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[int, array] = {}

    def get(self, pud_idx: int, default=None):
        table = self.tables.get(pud_idx >> TABLE_SHIFT)
        if table is None:
            return default
        entry = table[pud_idx & INDEX_MASK]
        return entry - 1 if entry else default

    def __contains__(self, pud_idx: int) -> bool:
        table = self.tables.get(pud_idx >> TABLE_SHIFT)
        return table is not None and table[pud_idx & INDEX_MASK] != 0

    def __getitem__(self, pud_idx: int) -> int:
        pfn = self.get(pud_idx)
        if pfn is None:
            raise KeyError(pud_idx)
        return pfn

    def __setitem__(self, pud_idx: int, pfn: int) -> None:
        table = self.tables.get(pud_idx >> TABLE_SHIFT)
        if table is None:
            table = self.tables[pud_idx >> TABLE_SHIFT] = new_table()
        table[pud_idx & INDEX_MASK] = pfn + 1

    def pop(self, pud_idx: int, *default):
        table = self.tables.get(pud_idx >> TABLE_SHIFT)
        entry = table[pud_idx & INDEX_MASK] if table is not None else 0
        if not entry:
            if default:
                return default[0]
            raise KeyError(pud_idx)
        table[pud_idx & INDEX_MASK] = 0
        return entry - 1

    def __delitem__(self, pud_idx: int) -> None:
        self.pop(pud_idx)

    def __len__(self) -> int:
        return sum(map(present, self.tables.values()))

    def __bool__(self) -> bool:
        return any(map(any, self.tables.values()))

    def __iter__(self) -> Iterator[int]:
        for key in sorted(self.tables):
            base = key << TABLE_SHIFT
            yield from [base + i for i, entry in enumerate(self.tables[key]) if entry]


class PageTable:
    """Sparse page table.  Public fields are read by the fault hot path directly.

    ``fail_allocs`` is fault injection: while it is N > 0, the next N page-table allocations of
    the fault path fail (the fault returns VM_FAULT_OOM), as pmd_alloc / pte_alloc can.
    """
    __slots__ = ("pud_leaves", "pud_tables", "pmd_tables", "fail_allocs")

    def __init__(self) -> None:
        self.pud_leaves = PudLeaves()
        self.pud_tables = self.pud_leaves.tables    # the same dict, one attribute hop less
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
        puds = self.pud_tables.get(pud_idx >> TABLE_SHIFT)
        if puds is not None:
            entry = puds[pud_idx & INDEX_MASK]
            if entry:
                return _new_tuple(Leaf, (LEVEL_PUD, pud_idx << PUD_SHIFT, entry - 1))
        table = self.pmd_tables.get(pud_idx)
        if table is None:
            return None
        pmd_idx = addr >> PMD_SHIFT
        entry = table.leaves[pmd_idx & INDEX_MASK]
        if entry:
            return _new_tuple(Leaf, (LEVEL_PMD, pmd_idx << PMD_SHIFT, entry - 1))
        ptes = table.pte_tables.get(pmd_idx)
        if ptes is None:
            return None
        page_idx = addr >> PAGE_SHIFT
        entry = ptes[page_idx & INDEX_MASK]
        return _new_tuple(Leaf, (LEVEL_PTE, page_idx << PAGE_SHIFT, entry - 1)) if entry else None

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
        if table.leaves[pmd_idx & INDEX_MASK]:
            return "leaf"
        return "table" if pmd_idx in table.pte_tables else "none"

    def has_pte_table(self, addr: int) -> bool:
        return self.slot_state(addr, LEVEL_PMD) == "table"

    def counts(self) -> tuple[int, int, int]:
        """Live leaves per level: (pud, pmd, pte)."""
        pmd = pte = 0
        for table in self.pmd_tables.values():
            pmd += present(table.leaves)
            for ptes in table.pte_tables.values():
                pte += present(ptes)
        return len(self.pud_leaves), pmd, pte

    def nr_tables(self) -> tuple[int, int]:
        """(PMD tables, PTE tables) allocated."""
        return len(self.pmd_tables), sum(len(t.pte_tables) for t in self.pmd_tables.values())

    def leaves(self, start: int = 0, end: int = 1 << 64) -> Iterator[Leaf]:
        """Every leaf overlapping [start, end), in address order."""
        pud_lo, pud_hi = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        puds = [k for k in self.pud_leaves if pud_lo <= k <= pud_hi]
        keys = sorted(puds + [k for k in self.pmd_tables if pud_lo <= k <= pud_hi])
        pud_leaves = self.pud_leaves
        for pud_idx in keys:
            table = self.pmd_tables.get(pud_idx)
            if table is None:
                yield Leaf(LEVEL_PUD, pud_idx << PUD_SHIFT, pud_leaves[pud_idx])
                continue
            first_pmd = pud_idx << TABLE_SHIFT
            slots = {first_pmd + i for i, entry in enumerate(table.leaves) if entry}
            for pmd_idx in sorted(slots.union(table.pte_tables)):
                pmd_va = pmd_idx << PMD_SHIFT
                if pmd_va + (1 << PMD_SHIFT) <= start or pmd_va >= end:
                    continue
                entry = table.leaves[pmd_idx & INDEX_MASK]
                if entry:
                    yield Leaf(LEVEL_PMD, pmd_va, entry - 1)
                    continue
                for i, entry in enumerate(table.pte_tables[pmd_idx]):
                    va = pmd_va + (i << PAGE_SHIFT)
                    if entry and start <= va < end:
                        yield Leaf(LEVEL_PTE, va, entry - 1)

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
        self.pmd_alloc(addr).leaves[(addr >> PMD_SHIFT) & INDEX_MASK] = pfn + 1

    def pte_alloc(self, addr: int) -> array:
        """The PTE table under ``addr``'s PMD slot (allocated if empty), ready to be written."""
        table = self.pmd_alloc(addr)
        pmd_idx = addr >> PMD_SHIFT
        ptes = table.pte_tables.get(pmd_idx)
        if ptes is None:
            if table.leaves[pmd_idx & INDEX_MASK]:
                raise RuntimeError(f"PMD slot of {addr:#x} holds a leaf, not a table")
            ptes = table.pte_tables[pmd_idx] = new_table()
        elif type(ptes) is LinearPtes:
            ptes = table.pte_tables[pmd_idx] = ptes.to_table()
        return ptes

    def set_pte(self, addr: int, pfn: int) -> None:
        self.pte_alloc(addr)[(addr >> PAGE_SHIFT) & INDEX_MASK] = pfn + 1

    def set_pte_range(self, start: int, end: int, pfn: int) -> None:
        """PTEs for [start, end) -> pfn, pfn+1, ... (remap_pfn_range).  Whole 2 MiB blocks whose
        PMD slot is empty become LinearPtes, so the cost does not grow with the bytes mapped."""
        addr = start
        while addr < end:
            block_end = (addr | ((1 << PMD_SHIFT) - 1)) + 1
            stop = min(end, block_end)
            table = self.pmd_alloc(addr)
            pmd_idx = addr >> PMD_SHIFT
            if addr == block_end - (1 << PMD_SHIFT) and block_end <= end and pmd_idx not in table.pte_tables \
                    and not table.leaves[pmd_idx & INDEX_MASK]:
                table.pte_tables[pmd_idx] = LinearPtes(addr >> PAGE_SHIFT, pfn)
            else:
                lo, hi = (addr >> PAGE_SHIFT) & INDEX_MASK, ((stop - 1) >> PAGE_SHIFT & INDEX_MASK) + 1
                self.pte_alloc(addr)[lo:hi] = array("Q", range(pfn + 1, pfn + 1 + hi - lo))
            pfn += (stop - addr) >> PAGE_SHIFT
            addr = stop

    # -- zap (zap_pud_range / zap_pmd_range / zap_pte_range for a special pfnmap VMA) --------
    def zap_range(self, start: int, end: int) -> list[Zapped]:
        """Clear every entry in [start, end) (page aligned).

        A huge leaf the range only partly covers is cleared whole and nothing is installed
        in its place (split of a special huge entry, docs/kernel-reference.md: zaps).  PTE tables stay
        allocated even when emptied.  Returns what was cleared, PTE runs coalesced.
        """
        out: list[Zapped] = []
        if end <= start:
            return out
        pud_lo, pud_hi = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        pud_leaves, pmd_tables = self.pud_leaves, self.pmd_tables
        if pud_lo == pud_hi:                    # the common small zap of a PUD leaf, inline
            puds = self.pud_tables.get(pud_lo >> TABLE_SHIFT)
            if puds is not None and puds[pud_lo & INDEX_MASK]:
                puds[pud_lo & INDEX_MASK] = 0
                out.append(_new_tuple(Zapped, (LEVEL_PUD, pud_lo << PUD_SHIFT, 1 << PUD_SHIFT)))
                return out
        if pud_hi - pud_lo + 1 <= len(pud_leaves) + len(pmd_tables):
            slots = range(pud_lo, pud_hi + 1)
        else:   # a sparse table under a huge range: walk the entries, not the slots
            slots = sorted([k for k in pud_leaves if pud_lo <= k <= pud_hi]
                           + [k for k in pmd_tables if pud_lo <= k <= pud_hi])
        for pud_idx in slots:
            table = pmd_tables.get(pud_idx)
            if table is not None:
                self._zap_pmd_table(table, max(start, pud_idx << PUD_SHIFT),
                                    min(end, (pud_idx + 1) << PUD_SHIFT), out)
            elif pud_leaves.pop(pud_idx, None) is not None:
                out.append(Zapped(LEVEL_PUD, pud_idx << PUD_SHIFT, 1 << PUD_SHIFT))
        return out

    @staticmethod
    def _zap_pmd_table(table: PmdTable, start: int, end: int, out: list[Zapped]) -> None:
        leaves, pte_tables = table.leaves, table.pte_tables
        for pmd_idx in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
            slot = pmd_idx & INDEX_MASK
            if leaves[slot]:
                leaves[slot] = 0
                out.append(Zapped(LEVEL_PMD, pmd_idx << PMD_SHIFT, 1 << PMD_SHIFT))
                continue
            ptes = pte_tables.get(pmd_idx)
            if ptes is None:
                continue
            pmd_va = pmd_idx << PMD_SHIFT
            lo = (max(start, pmd_va) - pmd_va) >> PAGE_SHIFT
            hi = (min(end, pmd_va + (1 << PMD_SHIFT)) - pmd_va) >> PAGE_SHIFT
            if type(ptes) is LinearPtes:
                if lo == 0 and hi == PTRS_PER_TABLE:    # the whole linear table goes; an empty one stays
                    pte_tables[pmd_idx] = new_table()
                    out.append(Zapped(LEVEL_PTE, pmd_va, PTRS_PER_TABLE << PAGE_SHIFT))
                    continue
                ptes = pte_tables[pmd_idx] = ptes.to_table()
            _zap_ptes(ptes, pmd_va, lo, hi, out)

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
            if (not present(table.leaves) and not table.pte_tables and pud_va >= floor
                    and pud_va + (1 << PUD_SHIFT) <= ceiling):
                del self.pmd_tables[pud_idx]

    # -- fork and mremap (pagetable_copy.py) ----------------------------------------------------
    def copy_range(self, dst: "PageTable", start: int, end: int) -> None:
        """copy_page_range for a VM_PFNMAP VMA: see pagetable_copy.copy_range."""
        from .pagetable_copy import copy_range
        copy_range(self, dst, start, end)

    def move_range(self, old_start: int, new_start: int, length: int) -> None:
        """move_page_tables: see pagetable_copy.move_range."""
        from .pagetable_copy import move_range
        move_range(self, old_start, new_start, length)


def _zap_ptes(ptes: array, pmd_va: int, lo: int, hi: int, out: list[Zapped]) -> None:
    """Clear entries [lo, hi) of one PTE table; one Zapped per run of consecutive present ones."""
    seg = ptes[lo:hi]
    empty = seg.count(0)
    if empty == hi - lo:
        return
    ptes[lo:hi] = array("Q", bytes(8 * (hi - lo)))
    if not empty:           # every entry present: one run
        out.append(Zapped(LEVEL_PTE, pmd_va + (lo << PAGE_SHIFT), (hi - lo) << PAGE_SHIFT))
        return
    run_start = None
    for i, entry in enumerate(seg, lo):
        if entry:
            if run_start is None:
                run_start = i
        elif run_start is not None:
            out.append(Zapped(LEVEL_PTE, pmd_va + (run_start << PAGE_SHIFT), (i - run_start) << PAGE_SHIFT))
            run_start = None
    if run_start is not None:
        out.append(Zapped(LEVEL_PTE, pmd_va + (run_start << PAGE_SHIFT), (hi - run_start) << PAGE_SHIFT))
