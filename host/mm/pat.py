"""x86 PAT memtype tracking of pfnmap VMAs (arch/x86/mm/pat/memtype.c), as far as it shows.

remap_pfn_range over a whole VMA (6.1 vfio-pci's first fault) reserves the VMA's physical
range in the memtype tree and marks the VMA VM_PAT (track_pfn_remap).  Every zap of a VM_PAT
VMA through unmap_single_vma untracks it (untrack_pfn(vma, 0, 0)): the physical start is read
from the page table (get_pat_info/follow_phys) and the range is erased from the tree, which
accepts only an exact or an end match (memtype_erase: munmap, mremap's shrink); anything else
logs "freeing invalid memtype".  A VM_PAT VMA whose first page is not mapped cannot be
untracked: WARN_ON_ONCE in get_pat_info (a VMA that mremap's copy_vma just created is one).

vmf_insert_pfn* (6.12+) do not track, so only the 6.1 profile ever sets VM_PAT.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import PAGE_SHIFT, VM_PAT

if TYPE_CHECKING:
    from ..machine import Machine
    from .vma import Vma


class MemtypeTree:
    """The reserved physical ranges, [start, end) each; overlapping reservations allowed."""

    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        # the tree is kernel-global: what a process leaves in it (a leak: an entry a split made
        # unmatchable) stays for the next process of the same boot
        self.ranges: list[list[int]] = machine.boot.setdefault("memtypes", [])

    def reserve(self, vma: "Vma", pfn: int) -> None:
        start = pfn << PAGE_SHIFT
        self.ranges.append([start, start + (vma.vm_end - vma.vm_start)])
        vma.vm_flags |= VM_PAT

    def copy(self, dst: "Vma", src: "Vma") -> None:
        """track_pfn_copy (fork): the child's VMA gets its own reservation."""
        leaf = src.vm_mm.pgtable.lookup(src.vm_start)
        if leaf is not None:
            self.reserve(dst, leaf.pfn_at(src.vm_start))

    def untrack(self, vma: "Vma", frames: tuple[str, ...]) -> None:
        """untrack_pfn(vma, 0, 0) from unmap_single_vma; ``frames`` is the call path (for the
        WARN splat), innermost first."""
        if not vma.vm_flags & VM_PAT:
            return
        leaf = vma.vm_mm.pgtable.lookup(vma.vm_start)
        if leaf is None:
            self.machine.warn_once("pat_get_info", "arch/x86/mm/pat/memtype.c", self.machine.profile.pat_warn_line,
                                   "untrack_pfn", ("unmap_single_vma",) + frames)
            return
        start = leaf.pfn_at(vma.vm_start) << PAGE_SHIFT
        end = start + (vma.vm_end - vma.vm_start)
        for entry in self.ranges:
            if entry == [start, end]:
                self.ranges.remove(entry)
                break
        else:
            for entry in self.ranges:
                if entry[1] == end and entry[0] < start:      # MEMTYPE_END_MATCH: shrink the node
                    entry[1] = start
                    break
            else:
                owner = vma.vm_mm.owner
                self.machine.klog.printk(f"x86/PAT: {owner.comm}:{owner.pid} freeing invalid memtype "
                                         f"[mem {start:#010x}-{end - 1:#010x}]")
        vma.vm_flags &= ~VM_PAT
