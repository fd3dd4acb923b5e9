"""A file's address_space and its i_mmap: the interval tree of VMAs mapping it, by file page.

vfio gives every device its own inode (since v6.10), so one AddressSpace per opened
device; unmap_mapping_range and memory_failure walk its i_mmap.  The tree comes from
the `intervaltree` library (half-open intervals [vm_pgoff, vm_pgoff + pages)).
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
        # insertion sequence per VMA: equal start pgoffs iterate in link order, as the rbtree does
        self._seq: dict[int, int] = {}

    def vma_link(self, vma: "Vma") -> None:
        """vma_interval_tree_insert (called with vm_start/vm_pgoff final)."""
        self._seq[id(vma)] = next(_link_seq)
        self.i_mmap.addi(vma.vm_pgoff, vma.vm_pgoff + vma.nr_pages, vma)

    def vma_unlink(self, vma: "Vma") -> None:
        """vma_interval_tree_remove; must run before the VMA's range or pgoff changes."""
        self.i_mmap.discardi(vma.vm_pgoff, vma.vm_pgoff + vma.nr_pages, vma)
        self._seq.pop(id(vma), None)

    def _ordered(self, intervals) -> list["Vma"]:
        seq = self._seq
        return [iv.data for iv in sorted(intervals, key=lambda iv: (iv.begin, seq[id(iv.data)]))]

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
        return len(self.i_mmap)

    @property
    def mapped(self) -> bool:
        """mapping_mapped(): is any VMA linked?"""
        return bool(self.i_mmap)


class File:
    """struct file of an opened device: its address_space and the driver object behind it."""

    def __init__(self, mapping: AddressSpace, private_data: Any = None, name: str = "") -> None:
        self.f_mapping = mapping
        self.private_data = private_data
        self.name = name

    def __repr__(self) -> str:
        return f"<File {self.name}>"
