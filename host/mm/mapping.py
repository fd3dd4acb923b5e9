"""A file's address_space and its i_mmap: the interval tree of VMAs mapping it, by file page.

vfio gives every device its own inode (since v6.10), so one AddressSpace per opened
device; unmap_mapping_range and memory_failure walk its i_mmap.  The tree comes from
the `intervaltree` library (half-open intervals [vm_pgoff, vm_pgoff + pages)).

intervaltree hashes an Interval by (begin, end) only, so N VMAs mapping the same file range
(N processes mapping one BAR) would collide in its internal sets and make insertion and
lookup O(N^2).  The tree therefore holds one Interval per distinct range whose data is the
list ("bucket") of VMAs with that range, in link order.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterator

from intervaltree import IntervalTree

if TYPE_CHECKING:
    from .vma import Vma

_link_seq = itertools.count()


class AddressSpace:
    """struct address_space: ``host`` is whatever owns it (a device), ``i_mmap`` the VMA tree."""

    def __init__(self, host: Any = None, name: str = "") -> None:
        self.host = host
        self.name = name
        self.i_mmap = IntervalTree()
        self._buckets: dict[tuple[int, int], list] = {}     # (begin, end) -> [(seq, vma), ...]
        self._count = 0
        self._by_mm: dict[int, list["Vma"]] | None = None    # by_mm()'s answer until a link/unlink

    def vma_link(self, vma: "Vma") -> None:
        """vma_interval_tree_insert (called with vm_start/vm_pgoff final)."""
        key = (vma.vm_pgoff, vma.vm_pgoff + vma.nr_pages)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            self.i_mmap.addi(key[0], key[1], bucket)
        bucket.append((next(_link_seq), vma))
        self._count += 1
        self._by_mm = None

    def vma_unlink(self, vma: "Vma") -> None:
        """vma_interval_tree_remove; must run before the VMA's range or pgoff changes."""
        key = (vma.vm_pgoff, vma.vm_pgoff + vma.nr_pages)
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        for i, (_, v) in enumerate(bucket):
            if v is vma:
                del bucket[i]
                self._count -= 1
                self._by_mm = None
                break
        if not bucket:
            self.i_mmap.removei(key[0], key[1], bucket)
            del self._buckets[key]

    @staticmethod
    def _ordered(intervals) -> list["Vma"]:
        intervals = list(intervals)
        if len(intervals) == 1:
            return [v for _, v in intervals[0].data]
        entries = [(iv.begin, seq, v) for iv in intervals for seq, v in iv.data]
        entries.sort(key=lambda e: (e[0], e[1]))
        return [v for _, _, v in entries]

    def vmas_overlapping(self, first: int, last: int) -> list["Vma"]:
        """VMAs mapping any file page in [first, last] (inclusive), in tree order
        (vma_interval_tree_foreach)."""
        if last < first:
            return []
        return self._ordered(self.i_mmap.overlap(first, last + 1))

    def __iter__(self) -> Iterator["Vma"]:
        """Every VMA in tree order (start pgoff, then link order)."""
        return iter(self._ordered(self.i_mmap))

    def __len__(self) -> int:
        return self._count

    def by_mm(self) -> dict[int, list["Vma"]]:
        """id(vm_mm) -> that mm's VMAs of this mapping, in tree order; mms in the order their
        first VMA comes in the tree.  Kept until a VMA is linked or unlinked: the tree order
        and a VMA's mm change only through vma_link/vma_unlink (a VMA's range and pgoff change
        only while it is unlinked, and its mm never).  The caller must not change the lists.
        memory_failure_pfn asks for this on every call; with 10,000 VMAs, bucketing them again
        each time was a seventh of the call."""
        by_mm = self._by_mm
        if by_mm is None:
            by_mm = {}
            for vma in self:
                bucket = by_mm.get(id(vma.vm_mm))
                if bucket is None:
                    by_mm[id(vma.vm_mm)] = bucket = []
                bucket.append(vma)
            self._by_mm = by_mm
        return by_mm

    @property
    def mapped(self) -> bool:
        """mapping_mapped(): is any VMA linked?"""
        return self._count > 0


class File:
    """struct file of an opened device: its address_space and the driver object behind it."""

    def __init__(self, mapping: AddressSpace, private_data: Any = None, name: str = "") -> None:
        self.f_mapping = mapping
        self.private_data = private_data
        self.name = name

    def __repr__(self) -> str:
        return f"<File {self.name}>"
