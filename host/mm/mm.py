"""struct mm_struct: one process's address space — its VMAs (sorted) and its page table."""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Iterator

from .pagetable import PageTable

if TYPE_CHECKING:
    from .vma import Vma


class MM:
    """VMAs sorted by vm_start (non-overlapping) plus the sparse page table.

    ``thp_disabled`` is MMF_DISABLE_THP (prctl PR_SET_THP_DISABLE); ``nr_faults`` counts
    handle_mm_fault calls, for the trace summary.
    """

    def __init__(self, owner: Any = None, machine: Any = None) -> None:
        self.owner = owner
        self.machine = machine      # the Machine whose settings (THP, arch, profile) apply
        self.pgtable = PageTable()
        self.thp_disabled = False
        self.thp_except_advised = False     # PR_THP_DISABLE_EXCEPT_ADVISED: MADV_HUGEPAGE VMAs stay eligible
        self.nr_faults = 0
        self._starts: list[int] = []
        self._vmas: list["Vma"] = []
        self._last: "Vma | None" = None     # one-entry lookup cache (the old vmacache)

    def __iter__(self) -> Iterator["Vma"]:
        return iter(list(self._vmas))

    def __len__(self) -> int:
        return len(self._vmas)

    def find_vma(self, addr: int) -> "Vma | None":
        """The VMA containing ``addr`` (vma_lookup), or None."""
        vma = self._last
        if vma is not None and vma.vm_start <= addr < vma.vm_end:
            return vma
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            vma = self._vmas[i]
            if addr < vma.vm_end:
                self._last = vma
                return vma
        return None

    def vmas_in(self, start: int, end: int) -> list["Vma"]:
        """VMAs overlapping [start, end), in address order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for vma in self._vmas[i:]:
            if vma.vm_start >= end:
                break
            if vma.vm_end > start:
                out.append(vma)
        return out

    def neighbours(self, start: int, end: int) -> tuple[int, int]:
        """(end of the VMA before ``start``, start of the VMA after ``end``): the floor and
        ceiling free_pgtables may free up to."""
        i = bisect.bisect_right(self._starts, start - 1) - 1
        floor = self._vmas[i].vm_end if i >= 0 and self._vmas[i].vm_end <= start else 0
        j = bisect.bisect_left(self._starts, end)
        ceiling = self._vmas[j].vm_start if j < len(self._vmas) else 1 << 64
        return floor, ceiling

    def insert_vma(self, vma: "Vma") -> None:
        """Add a VMA to the sorted set (the caller checked it overlaps nothing)."""
        i = bisect.bisect_left(self._starts, vma.vm_start)
        self._starts.insert(i, vma.vm_start)
        self._vmas.insert(i, vma)

    def remove_vma(self, vma: "Vma") -> None:
        i = bisect.bisect_left(self._starts, vma.vm_start)
        if i >= len(self._vmas) or self._vmas[i] is not vma:
            raise ValueError(f"{vma!r} is not in this mm")
        del self._starts[i]
        del self._vmas[i]
        if self._last is vma:
            self._last = None

    def reindex(self) -> None:
        """Re-sort after VMA boundaries changed in place (split)."""
        self._vmas.sort(key=lambda v: v.vm_start)
        self._starts = [v.vm_start for v in self._vmas]
        self._last = None

    def __repr__(self) -> str:
        pid = getattr(self.owner, "pid", None)
        return f"<MM pid={pid} vmas={len(self._vmas)}>"
