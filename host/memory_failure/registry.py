"""register_pfn_address_space / unregister_pfn_address_space: the global interval tree of
inclusive pfn ranges under one lock (docs/kernel-reference.md: registration).

The tree is the `intervaltree` library (half-open intervals, so [start, last] is stored as
[start, last + 1)).  The kernel does not validate start <= last; such a space is accepted
(nothing overlaps an empty range) but can never match a lookup, so it is kept aside.
"""
from __future__ import annotations

import errno
from typing import Iterator

from intervaltree import IntervalTree

from ..mm.pfn_space import PfnAddressSpace


class RegistryCorruption(RuntimeError):
    """unregister of an object that is not the registered node overlapping its range: in the
    kernel this would corrupt the interval tree (undefined behaviour), so the model refuses."""


class PfnSpaceRegistry:
    """pfn_space_itree + pfn_space_lock.  ``enabled`` False models CONFIG_MEMORY_FAILURE=n (the
    v7.0 stubs): register returns -EOPNOTSUPP and unregister does nothing.  ``needs_callback``
    is the v6.19-rc4 rule that a space without pfn_to_vma_pgoff is refused with -EINVAL."""

    def __init__(self, enabled: bool = True, needs_callback: bool = True) -> None:
        self.enabled = enabled
        self.needs_callback = needs_callback
        self._tree = IntervalTree()
        self._degenerate: list[PfnAddressSpace] = []
        self.lock_acquisitions = 0

    def register(self, space: PfnAddressSpace) -> int:
        if not self.enabled:
            return -errno.EOPNOTSUPP
        self.lock_acquisitions += 1
        if self.needs_callback and space.pfn_to_vma_pgoff is None:
            return -errno.EINVAL
        if space.last < space.start:
            self._degenerate.append(space)
            return 0
        if self._tree.overlaps(space.start, space.last + 1):
            return -errno.EBUSY
        self._tree.addi(space.start, space.last + 1, space)
        return 0

    def unregister(self, space: PfnAddressSpace) -> None:
        if not self.enabled:
            return
        self.lock_acquisitions += 1
        for i, other in enumerate(self._degenerate):
            if other is space:
                del self._degenerate[i]
                return
        if space.last < space.start:
            return
        hits = self._tree.overlap(space.start, space.last + 1)
        if not hits:
            return                  # nothing overlaps: a no-op, as in the kernel
        for iv in hits:
            if iv.data is space:
                self._tree.remove(iv)
                return
        raise RegistryCorruption(f"unregister_pfn_address_space: [{space.start:#x}, {space.last:#x}] overlaps "
                                 f"a registered space that is not this object")

    def lookup(self, pfn: int) -> list[PfnAddressSpace]:
        """Every space whose [start, last] contains ``pfn`` (interval tree iteration order)."""
        hits = self._tree.at(pfn)
        if not hits:
            return []
        if len(hits) == 1:
            return [next(iter(hits)).data]
        return [iv.data for iv in sorted(hits)]

    def __iter__(self) -> Iterator[PfnAddressSpace]:
        return iter([iv.data for iv in sorted(self._tree)] + self._degenerate)

    def __len__(self) -> int:
        return len(self._tree) + len(self._degenerate)

    def __contains__(self, space: PfnAddressSpace) -> bool:
        return any(s is space for s in self)
