"""A set of poisoned pfns with a fast "any poison in [lo, hi)" query for huge_fault.

A hash set answers membership; a sorted list answers the range query with one bisect
(O(log n), about a microsecond with a million pfns).  Inserting one pfn is a list insert
(a memmove, fast in practice); bulk loads use update(), which sorts once.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Iterable, Iterator


class PoisonSet:
    __slots__ = ("_set", "_sorted")

    def __init__(self, pfns: Iterable[int] = ()) -> None:
        self._set: set[int] = set(pfns)
        self._sorted: list[int] = sorted(self._set)

    def add(self, pfn: int) -> bool:
        """Add ``pfn``; False if it was already there."""
        if pfn in self._set:
            return False
        self._set.add(pfn)
        insort(self._sorted, pfn)
        return True

    def update(self, pfns: Iterable[int]) -> None:
        self._set.update(pfns)
        self._sorted = sorted(self._set)

    def discard(self, pfn: int) -> bool:
        if pfn not in self._set:
            return False
        self._set.remove(pfn)
        del self._sorted[bisect_left(self._sorted, pfn)]
        return True

    def __contains__(self, pfn: int) -> bool:
        return pfn in self._set

    def first_in(self, lo: int, hi: int) -> int | None:
        """Smallest poisoned pfn in [lo, hi), or None."""
        s = self._sorted
        i = bisect_left(s, lo)
        if i < len(s) and s[i] < hi:
            return s[i]
        return None

    def any_in(self, lo: int, hi: int) -> bool:
        s = self._sorted
        i = bisect_left(s, lo)
        return i < len(s) and s[i] < hi

    def in_range(self, lo: int, hi: int) -> list[int]:
        s = self._sorted
        return s[bisect_left(s, lo):bisect_left(s, hi)]

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._sorted))
