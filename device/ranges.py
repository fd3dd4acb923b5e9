"""A set of byte ranges: merged, half-open [start, end) ranges kept as their sorted boundaries.

The ranges are stored as one increasing sequence of boundaries s0 < e0 < s1 < e1 < ...
(merged ranges never touch, so the sequence is strict).  A byte x is in the set exactly when an
odd number of boundaries are <= x, so a query is one bisect.  The sequence is cut into blocks of
unsigned 64-bit arrays (at most 2 * LOAD boundaries each, always an even number, so a position's
parity inside its block is its global parity) under a list of each block's last boundary:

* query: a bisect of that list and one of a block, O(log n), about a microsecond at 10**6 ranges;
* insert / remove: the same bisects and a splice of one block (a memmove of at most 32 KiB), so
  the cost no longer grows with the set (a flat array moved 16 MiB per insert at 10**6 ranges);
* bulk load: a C-level check that the boundaries are strictly increasing (input already sorted
  and disjoint, as a poison file is, needs no sort and no merge), else one sort by start and a
  merge, then slicing into blocks.

16 bytes per range.  Why not a library: sortedcontainers' SortedList keeps Python ints (about
120 bytes per range with two lists) and was slower here on every operation at 10**6 ranges
(query 3-7 us, merging insert 17 us, splitting remove 20 us, build 1.8 s); pyroaring's
BitMap64 selects by rank in time linear in its containers and costs ~125 bytes per sparse value.
"""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from itertools import chain, islice
from operator import itemgetter, lt
from typing import Iterable, Iterator

LOAD = 1024                 # a block holds LOAD..2*LOAD boundaries after a split


def _pairs(bounds: Iterable[int]) -> Iterator[tuple[int, int]]:
    it = iter(bounds)
    return zip(it, it)


class RangeSet:
    __slots__ = ("_blocks", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._blocks: list[array] = []      # non-empty, even length, increasing across blocks
        self._lasts: list[int] = []         # _lasts[k] == _blocks[k][-1]
        self.update(ranges)

    # -- views -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(map(len, self._blocks)) >> 1

    def __bool__(self) -> bool:
        return bool(self._blocks)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return _pairs(chain.from_iterable(self._blocks))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        body = ", ".join(f"[{s:#x}, {e:#x})" for s, e in islice(self, 4))
        return f"RangeSet({body}{', ...' if len(self) > 4 else ''})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    # -- positions: (block, index in block) of bisect_left / bisect_right over all boundaries ---
    def _left(self, x: int) -> tuple[int, int]:
        k = bisect_left(self._lasts, x)
        if k == len(self._lasts):
            return k - 1, len(self._blocks[k - 1])
        return k, bisect_left(self._blocks[k], x)

    def _right(self, x: int) -> tuple[int, int]:
        k = bisect_right(self._lasts, x)
        if k == len(self._lasts):
            return k - 1, len(self._blocks[k - 1])
        return k, bisect_right(self._blocks[k], x)

    def _splice(self, first: tuple[int, int], last: tuple[int, int], new: tuple[int, ...]) -> None:
        """Replace the boundaries from position ``first`` up to ``last`` by ``new``."""
        (ki, i), (kj, j) = first, last
        blocks = self._blocks
        if ki == kj:
            block = blocks[ki]
            block[i:j] = array("Q", new)
        else:       # the change spans blocks: join the two ends into one block
            block = blocks[ki][:i] + array("Q", new) + blocks[kj][j:]
            del blocks[ki + 1:kj + 1], self._lasts[ki + 1:kj + 1]
            blocks[ki] = block
        if not block:
            del blocks[ki], self._lasts[ki]
            return
        if len(block) > 2 * LOAD:
            pieces = [block[n:n + LOAD] for n in range(0, len(block), LOAD)]
            blocks[ki:ki + 1] = pieces
            self._lasts[ki:ki + 1] = [piece[-1] for piece in pieces]
        else:
            self._lasts[ki] = block[-1]

    # -- changes -----------------------------------------------------------------------------
    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        if not self._blocks:
            self._blocks.append(array("Q", (start, end)))
            self._lasts.append(end)
            return
        first = self._left(start)           # a range ending at ``start`` merges (touching)
        last = self._right(end)             # so does one starting at ``end``
        # an even position lies outside every range: that end of the new range stays a boundary
        new = ((start,) if not first[1] & 1 else ()) + ((end,) if not last[1] & 1 else ())
        self._splice(first, last, new)

    def update(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Bulk add: rebuild the blocks from everything, sorting only when the input is not
        already sorted and disjoint (a poison file's entries are)."""
        pending = list(ranges)
        if not pending:
            return
        if self._blocks:
            pending.extend(self)
        bounds = None if self._blocks else _bounds(pending)
        if bounds is None or not _strictly_increasing(bounds):
            pending.sort(key=itemgetter(0))
            bounds = _bounds(pending)
            if not _strictly_increasing(bounds):        # overlapping, touching or empty ranges
                bounds = _bounds(_merged(pending))
        self._blocks = [bounds[n:n + LOAD] for n in range(0, len(bounds), LOAD)]
        self._lasts = [block[-1] for block in self._blocks]

    def remove(self, start: int, end: int) -> int:
        """Remove [start, end); returns how many bytes were in the set."""
        if end <= start or not self._blocks:
            return 0
        removed = sum(e - s for s, e in self.within(start, end))
        if removed:
            first, last = self._left(start), self._right(end)
            # an odd position lies inside a range: the part before ``start`` / after ``end`` stays
            new = ((start,) if first[1] & 1 else ()) + ((end,) if last[1] & 1 else ())
            self._splice(first, last, new)
        return removed

    def clear(self) -> None:
        self._blocks.clear()
        self._lasts.clear()

    # -- queries -----------------------------------------------------------------------------
    def overlaps(self, start: int, end: int) -> bool:
        """Is any byte of [start, end) in the set?"""
        lasts = self._lasts
        k = bisect_right(lasts, start)
        if k == len(lasts):
            return False                    # at or past the last range's end
        block = self._blocks[k]
        i = bisect_right(block, start)
        if i & 1:
            return True                     # start lies inside a range
        return block[i] < end

    def first_in(self, start: int, end: int) -> int | None:
        """The lowest byte of [start, end) in the set, or None."""
        k = bisect_right(self._lasts, start)
        if k == len(self._lasts):
            return None
        block = self._blocks[k]
        i = bisect_right(block, start)
        if i & 1:
            return start
        return block[i] if block[i] < end else None

    def within(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of the set inside [start, end), clipped."""
        blocks = self._blocks
        k = bisect_right(self._lasts, start)
        if k < len(blocks):
            i = bisect_right(blocks[k], start) & ~1         # the range holding or following start
        while k < len(blocks):
            block = blocks[k]
            for n in range(i, len(block), 2):
                s = block[n]
                if s >= end:
                    return
                yield max(s, start), min(block[n + 1], end)
            k, i = k + 1, 0

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


def _bounds(ranges: Iterable[tuple[int, int]]) -> array:
    return array("Q", chain.from_iterable(ranges))


def _strictly_increasing(bounds: array) -> bool:
    """s0 < e0 < s1 < ...: every range non-empty, sorted, apart from the next (checked in C)."""
    return all(map(lt, bounds, islice(bounds, 1, None)))


def _merged(ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Ranges sorted by start -> merged, non-touching, non-empty ranges."""
    cur_s = cur_e = None
    for s, e in ranges:
        if e <= s:
            continue
        if cur_e is not None and s <= cur_e:
            if e > cur_e:
                cur_e = e
            continue
        if cur_e is not None:
            yield cur_s, cur_e
        cur_s, cur_e = s, e
    if cur_e is not None:
        yield cur_s, cur_e
