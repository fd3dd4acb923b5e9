"""A set of byte ranges kept as two sorted arrays of merged, half-open [start, end) ranges.

Queries are bisects, so "is any byte of [a, b) in the set" costs O(log n) whatever the
number of ranges; insertion and removal splice the arrays (a memmove, fast in C).  The
arrays hold unsigned 64-bit machine words: 16 bytes per range, and faster to bisect than
a list of Python ints (bench/bench_device.py).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import Iterable, Iterator


class RangeSet:
    __slots__ = ("starts", "ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self.starts = array("Q")
        self.ends = array("Q")
        self.update(ranges)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.starts == other.starts and self.ends == other.ends

    def __repr__(self) -> str:
        body = ", ".join(f"[{s:#x}, {e:#x})" for s, e in list(self)[:4])
        return f"RangeSet({body}{', ...' if len(self) > 4 else ''})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect_left(self.ends, start)        # first range ending at or after start (touching merges)
        j = bisect_right(self.starts, end)       # ranges starting at or before end
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = array("Q", (start,))
        self.ends[i:j] = array("Q", (end,))

    def update(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Bulk add: sort and merge once, then merge with what is already there."""
        merged: list[list[int]] = []
        for s, e in sorted(ranges):
            if e <= s:
                continue
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        if not self.starts:
            self.starts = array("Q", [s for s, _ in merged])
            self.ends = array("Q", [e for _, e in merged])
            return
        for s, e in merged:
            self.add(s, e)

    def remove(self, start: int, end: int) -> int:
        """Remove [start, end); returns how many bytes were in the set."""
        if end <= start:
            return 0
        i = bisect_right(self.ends, start)       # first range ending after start
        j = bisect_left(self.starts, end)        # ranges starting before end
        if i >= j:
            return 0
        removed = sum(min(e, end) - max(s, start) for s, e in zip(self.starts[i:j], self.ends[i:j]))
        keep_s = array("Q")
        keep_e = array("Q")
        if self.starts[i] < start:
            keep_s.append(self.starts[i])
            keep_e.append(start)
        if self.ends[j - 1] > end:
            keep_s.append(end)
            keep_e.append(self.ends[j - 1])
        self.starts[i:j] = keep_s
        self.ends[i:j] = keep_e
        return removed

    def clear(self) -> None:
        del self.starts[:]
        del self.ends[:]

    def overlaps(self, start: int, end: int) -> bool:
        """Is any byte of [start, end) in the set?"""
        i = bisect_right(self.ends, start)
        return i < len(self.starts) and self.starts[i] < end

    def first_in(self, start: int, end: int) -> int | None:
        """The lowest byte of [start, end) in the set, or None."""
        i = bisect_right(self.ends, start)
        if i < len(self.starts) and self.starts[i] < end:
            return max(self.starts[i], start)
        return None

    def within(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of the set inside [start, end), clipped."""
        i = bisect_right(self.ends, start)
        while i < len(self.starts) and self.starts[i] < end:
            yield max(self.starts[i], start), min(self.ends[i], end)
            i += 1

    def pages(self, page_shift: int = 12) -> Iterator[int]:
        """Page numbers (offset >> page_shift) of every page holding at least one byte."""
        last = -1
        for s, e in self:
            first = s >> page_shift
            if first <= last:
                first = last + 1
            stop = (e - 1) >> page_shift
            yield from range(first, stop + 1)
            if stop > last:
                last = stop
