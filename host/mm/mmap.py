"""mmap / munmap / madvise on an mm: VMA creation, splitting and removal.

Errors are returned as negative errno ints, as the syscalls do.  Device mmaps are
MAP_FIXED at the given address (an existing mapping there is unmapped first, as
do_mmap does before calling the file's ->mmap).  VMAs with VM_SPECIAL flags never merge.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from .constants import (MADV_HUGEPAGE, MADV_NOHUGEPAGE, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE,
                        TASK_SIZE, VM_HUGEPAGE, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_NOHUGEPAGE,
                        VM_READ, VM_SHARED, VM_WRITE)
from .vma import Vma
from .zap import zap_vma_range

if TYPE_CHECKING:
    from .mapping import File
    from .mm import MM


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _split_huge_at(vma: Vma, addr: int) -> None:
    """vma_adjust_trans_huge: a huge leaf straddling a new VMA boundary is split, which for
    a pfnmap means cleared (nothing reinstalled)."""
    for size in (PUD_SIZE, PMD_SIZE):
        if addr % size:
            base = addr - addr % size
            leaf = vma.vm_mm.pgtable.lookup(addr)
            if leaf is not None and leaf.va == base and leaf.size == size:
                vma.vm_mm.pgtable.zap_range(base, base + size)


def split_vma(vma: Vma, addr: int) -> Vma:
    """Split ``vma`` at ``addr``; returns the new upper part [addr, old end)."""
    mm = vma.vm_mm
    mapping = vma.vm_file.f_mapping if vma.vm_file is not None else None
    _split_huge_at(vma, addr)
    if mapping is not None:
        mapping.vma_unlink(vma)
    new = Vma(mm, addr, vma.vm_end, vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT), vma.vm_flags,
              vma.vm_file, vma.vm_ops, vma.vm_private_data)
    vma.vm_end = addr
    if mapping is not None:
        mapping.vma_link(vma)
        mapping.vma_link(new)
    mm.insert_vma(new)
    mm.reindex()
    return new


def _isolate(mm: "MM", start: int, end: int) -> list[Vma]:
    """Split VMAs at start and end; return those now fully inside [start, end)."""
    for vma in mm.vmas_in(start, end):
        if vma.vm_start < start < vma.vm_end:
            split_vma(vma, start)
    for vma in mm.vmas_in(start, end):
        if vma.vm_start < end < vma.vm_end:
            split_vma(vma, end)
    return mm.vmas_in(start, end)


def do_munmap(mm: "MM", start: int, length: int) -> int:
    """munmap(2): zap and remove every VMA piece in [start, start+len), free unused tables."""
    if start % PAGE_SIZE or length <= 0 or start + length > TASK_SIZE:
        return -errno.EINVAL
    end = start + page_align(length)
    for vma in _isolate(mm, start, end):
        zap_vma_range(vma, vma.vm_start, vma.vm_end)
        if vma.vm_file is not None:
            vma.vm_file.f_mapping.vma_unlink(vma)
        mm.remove_vma(vma)
    floor, ceiling = mm.neighbours(start, end)
    mm.pgtable.free_tables(start, end, floor, ceiling)
    return 0


def do_mmap(mm: "MM", file: "File", addr: int, length: int, pgoff: int, shared: bool,
            mmap_op: Callable[[Vma], int], writable: bool = True) -> int | Vma:
    """mmap(addr, length, PROT_READ|PROT_WRITE, MAP_FIXED|MAP_SHARED/PRIVATE, fd, pgoff << 12).

    Returns the new Vma, or a negative errno.  ``mmap_op`` is the file's ->mmap; if it fails
    the VMA is discarded (whatever MAP_FIXED unmapped stays unmapped, as in the kernel).
    """
    if length <= 0 or addr % PAGE_SIZE:
        return -errno.EINVAL
    length = page_align(length)
    if addr + length > TASK_SIZE:
        return -errno.ENOMEM
    if pgoff + (length >> PAGE_SHIFT) >= 1 << 64:
        return -errno.EOVERFLOW
    do_munmap(mm, addr, length)
    flags = VM_READ | VM_MAYREAD | VM_MAYWRITE
    if writable:
        flags |= VM_WRITE
    if shared:
        flags |= VM_SHARED | VM_MAYSHARE
    vma = Vma(mm, addr, addr + length, pgoff, flags, file)
    ret = mmap_op(vma)
    if ret:
        return ret
    mm.insert_vma(vma)
    file.f_mapping.vma_link(vma)
    return vma


def do_madvise(mm: "MM", start: int, length: int, advice: int) -> int:
    """madvise(MADV_HUGEPAGE / MADV_NOHUGEPAGE): set the VMA flag on the range, splitting VMAs.
    A hole in the range gives -ENOMEM after the mapped parts were updated."""
    if advice not in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
        return -errno.EINVAL
    if start % PAGE_SIZE or length < 0:
        return -errno.EINVAL
    end = start + page_align(length)
    if end == start:
        return 0
    covered = 0
    for vma in _isolate(mm, start, end):
        if advice == MADV_HUGEPAGE:
            vma.vm_flags = (vma.vm_flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE
        else:
            vma.vm_flags = (vma.vm_flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE
        covered += vma.vm_end - vma.vm_start
    return 0 if covered == end - start else -errno.ENOMEM
