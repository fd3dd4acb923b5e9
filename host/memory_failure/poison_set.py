"""A set of poisoned pfns with a fast "any poison in [lo, hi)" query for huge_fault.

The set is a 64-bit roaring bitmap (pyroaring's BitMap64, the CRoaring library): adding or
removing one pfn, membership and the range queries are single C calls, O(log n), well under
a microsecond with a million pfns, and a bulk load builds the bitmap in C.  It replaced a hash
set plus a sorted list whose insort cost a memmove of the whole list per insert (about a
millisecond at a million pfns; bench/bench_memory_failure.py prints both figures).
"""
from __future__ import annotations

from itertools import takewhile
from typing import Iterable, Iterator

from pyroaring import BitMap64

PFN_LIMIT = (1 << 64) - 1           # BitMap64 holds unsigned 64-bit values (range ends included)


def _clipped(lo: int, hi: int) -> tuple[int, int]:
    return max(lo, 0), min(hi, PFN_LIMIT)


class PoisonSet:
    __slots__ = ("_bits",)

    def __init__(self, pfns: Iterable[int] = ()) -> None:
        self._bits = BitMap64(pfns)

    def add(self, pfn: int) -> bool:
        """Add ``pfn``; False if it was already there."""
        bits = self._bits
        if pfn in bits:
            return False
        bits.add(pfn)
        return True

    def update(self, pfns: Iterable[int]) -> None:
        self._bits.update(pfns)

    def discard(self, pfn: int) -> bool:
        bits = self._bits
        if pfn not in bits:
            return False
        bits.discard(pfn)
        return True

    def __contains__(self, pfn: int) -> bool:
        try:
            return pfn in self._bits
        except OverflowError:           # negative or past 64 bits: never a pfn
            return False

    def any_in(self, lo: int, hi: int) -> bool:
        if hi <= lo:
            return False
        try:
            return self._bits.range_cardinality(lo, hi) > 0
        except OverflowError:           # bounds outside 0 .. 2**64 - 1: clip them
            lo, hi = _clipped(lo, hi)
            return lo < hi and self._bits.range_cardinality(lo, hi) > 0

    def first_in(self, lo: int, hi: int) -> int | None:
        """Smallest poisoned pfn in [lo, hi), or None."""
        if not self.any_in(lo, hi):
            return None
        return self._bits.next_set_bit(max(lo, 0))

    def in_range(self, lo: int, hi: int) -> list[int]:
        lo, hi = _clipped(lo, hi)
        if lo >= hi:
            return []
        return list(takewhile(hi.__gt__, self._bits.iter_equal_or_larger(lo)))

    def __len__(self) -> int:
        return len(self._bits)

    def __bool__(self) -> bool:
        return bool(self._bits)

    def __iter__(self) -> Iterator[int]:
        """Ascending order, a snapshot (the set may change while the caller iterates)."""
        return iter(self._bits.to_array())
