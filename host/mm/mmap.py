"""mmap / munmap / madvise on an mm: VMA creation, splitting and removal.

Errors are returned as negative errno ints, as the syscalls do.  Device mmaps are
MAP_FIXED at the given address (an existing mapping there is unmapped first, as
do_mmap does before calling the file's ->mmap).  VMAs with VM_SPECIAL flags never merge.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from .constants import (MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_NORMAL, MREMAP_FIXED,
                        MREMAP_MAYMOVE, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PROT_READ, PROT_WRITE, PUD_SIZE,
                        TASK_SIZE, VM_DONTEXPAND, VM_HUGEPAGE, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE,
                        VM_NOHUGEPAGE, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE)
from .vma import Vma
from .zap import zap_vma_range

if TYPE_CHECKING:
    from .mapping import File
    from .mm import MM


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _split_huge_at(vma: Vma, addr: int) -> None:
    """vma_adjust_trans_huge at a new VMA boundary ``addr``: a huge leaf across it is split,
    which for a pfnmap means cleared (nothing is reinstalled).  Which leaves are split
    depends on the kernel (KernelProfile.vma_split_huge); one kernel oopses instead."""
    pt = vma.vm_mm.pgtable
    leaf = pt.lookup(addr)
    if leaf is None or leaf.va == addr:
        return
    if vma.vm_mm.machine.profile.vma_split_huge == "leaf":
        if leaf.size > PAGE_SIZE:       # split_huge_leaf: the PUD, or the PMD, across addr
            pt.zap_range(leaf.va, leaf.va + leaf.size)
        return
    # split_huge_pmd_if_needed only: a boundary that is not 2 MiB aligned looks for a PMD
    if addr % PMD_SIZE == 0:
        return                          # a PUD leaf across a 2 MiB boundary stays as it is
    if leaf.size == PUD_SIZE:
        from ..oops import KernelOops
        raise KernelOops("BUG: unable to handle page fault for address: <ptr>",
                         ("_raw_spin_lock", "__split_huge_pmd", "vma_adjust_trans_huge"),
                         f"a VMA boundary at {addr:#x} inside the PUD leaf at {leaf.va:#x}: mm_find_pmd "
                         "reads the PUD leaf as a PMD table and __split_huge_pmd takes a lock in device memory")
    if leaf.size == PMD_SIZE:
        pt.zap_range(leaf.va, leaf.va + leaf.size)


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
    if new.vm_ops is not None and new.vm_ops.open is not None:
        new.vm_ops.open(new)            # __split_vma: the new part is opened
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
        remove_vma(vma)
    floor, ceiling = mm.neighbours(start, end)
    mm.pgtable.free_tables(start, end, floor, ceiling)
    return 0


def remove_vma(vma: Vma) -> None:
    """Zap a whole VMA, close it (vm_ops->close), unlink it from its file and its mm."""
    zap_vma_range(vma, vma.vm_start, vma.vm_end)
    if vma.vm_ops is not None and vma.vm_ops.close is not None:
        vma.vm_ops.close(vma)
    if vma.vm_file is not None:
        vma.vm_file.f_mapping.vma_unlink(vma)
    vma.vm_mm.remove_vma(vma)


def do_mmap(mm: "MM", file: "File", addr: int, length: int, pgoff: int, shared: bool,
            mmap_op: Callable[[Vma], int], writable: bool = True, prot: int | None = None) -> int | Vma:
    """mmap(addr, length, prot, MAP_FIXED|MAP_SHARED/PRIVATE, fd, pgoff << 12); ``prot``
    (PROT_READ 1 | PROT_WRITE 2) defaults to read-write (``writable``) .

    Returns the new Vma, or a negative errno.  ``mmap_op`` is the file's ->mmap; if it fails
    the VMA is discarded (whatever MAP_FIXED unmapped stays unmapped, as in the kernel).
    """
    if prot is None:
        prot = PROT_READ | (PROT_WRITE if writable else 0)
    if length <= 0 or addr % PAGE_SIZE:
        return -errno.EINVAL
    length = page_align(length)
    if addr + length > TASK_SIZE:
        return -errno.ENOMEM
    if pgoff + (length >> PAGE_SHIFT) >= 1 << 64:
        return -errno.EOVERFLOW
    do_munmap(mm, addr, length)
    flags = VM_MAYREAD | VM_MAYWRITE | _prot_flags(prot)
    if shared:
        flags |= VM_SHARED | VM_MAYSHARE
    vma = Vma(mm, addr, addr + length, pgoff, flags, file)
    ret = mmap_op(vma)
    if ret:
        return ret
    mm.insert_vma(vma)
    file.f_mapping.vma_link(vma)
    return vma


def _prot_flags(prot: int) -> int:
    return (VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)


def _covered(mm: "MM", start: int, end: int) -> bool:
    return sum(min(v.vm_end, end) - max(v.vm_start, start) for v in mm.vmas_in(start, end)) == end - start


def _modify(mm: "MM", start: int, end: int, new_flags: Callable[[Vma], int]) -> None:
    """vma_modify_flags over [start, end): only VMAs whose flags change are split."""
    for vma in mm.vmas_in(start, end):
        if new_flags(vma) == vma.vm_flags:
            continue
        lo, hi = max(vma.vm_start, start), min(vma.vm_end, end)
        if vma.vm_start < lo:
            vma = split_vma(vma, lo)
        if hi < vma.vm_end:
            split_vma(vma, hi)
        vma.vm_flags = new_flags(vma)


def do_madvise(mm: "MM", start: int, length: int, advice: int) -> int:
    """madvise(MADV_HUGEPAGE / NOHUGEPAGE / NORMAL / DONTNEED) over [start, start + length).

    HUGEPAGE/NOHUGEPAGE set the VMA flag, splitting a VMA only where its flags change.
    DONTNEED is refused for VM_PFNMAP VMAs (madvise_dontneed_free: can_madv_lru_vma).
    A hole in the range gives -ENOMEM after the mapped parts were updated."""
    if advice not in (MADV_NORMAL, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE):
        return -errno.EINVAL
    if start % PAGE_SIZE or length < 0:
        return -errno.EINVAL
    end = start + page_align(length)
    if end == start:
        return 0
    if advice == MADV_DONTNEED:
        if any(v.vm_flags & VM_PFNMAP for v in mm.vmas_in(start, end)):
            return -errno.EINVAL
        return 0 if _covered(mm, start, end) else -errno.ENOMEM
    covered = _covered(mm, start, end)
    if advice == MADV_HUGEPAGE:
        _modify(mm, start, end, lambda v: (v.vm_flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE)
    elif advice == MADV_NOHUGEPAGE:
        _modify(mm, start, end, lambda v: (v.vm_flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE)
    return 0 if covered else -errno.ENOMEM


def do_mprotect(mm: "MM", start: int, length: int, prot: int) -> int:
    """mprotect(2): split VMAs at the ends, set VM_READ/VM_WRITE, change_protection.

    Leaves stay mapped with the new protection (change_huge_pud/pmd keep special pfnmap
    leaves, and a shared mapping made writable again gets writable entries, so no write
    fault follows); a huge leaf the range covers only in part is split, i.e. cleared."""
    if start % PAGE_SIZE or prot & ~(PROT_READ | PROT_WRITE):
        return -errno.EINVAL
    end = start + page_align(length)
    if end == start:
        return 0
    if end > TASK_SIZE or end < start:
        return -errno.ENOMEM
    vmas = mm.vmas_in(start, end)
    if not vmas or vmas[0].vm_start > start:
        return -errno.ENOMEM
    for vma in vmas:
        if prot & PROT_WRITE and not vma.vm_flags & VM_MAYWRITE:
            return -errno.EACCES
    covered = _covered(mm, start, end)
    _modify(mm, start, end, lambda v: (v.vm_flags & ~(VM_READ | VM_WRITE)) | _prot_flags(prot))
    pt = mm.pgtable
    for edge in (start, end):
        leaf = pt.lookup(edge) if edge < end else pt.lookup(edge - 1)
        if leaf is not None and leaf.size > PAGE_SIZE and not (start <= leaf.va and leaf.va + leaf.size <= end):
            pt.zap_range(leaf.va, leaf.va + leaf.size)      # change_pud_range / change_pmd_range: split
    return 0 if covered else -errno.ENOMEM


def do_mremap(mm: "MM", addr: int, old_len: int, new_len: int, flags: int, new_addr: int) -> int:
    """mremap(2) of a device mapping: shrink in place, or move (MREMAP_MAYMOVE|MREMAP_FIXED).

    Growing a VM_DONTEXPAND / VM_PFNMAP VMA is refused with -EFAULT (vma_to_resize).  A move
    carries the page-table entries along (move_page_tables): PMD leaves whose old and new
    addresses are 2 MiB aligned move whole, PTEs move one by one, a huge PUD moves or is
    dropped as a "bad pud" depending on the kernel (KernelProfile.mremap_huge_pud).  Returns
    the new address or a negative errno."""
    if addr % PAGE_SIZE or flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED):
        return -errno.EINVAL
    if flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE:
        return -errno.EINVAL
    old_len, new_len = page_align(old_len), page_align(new_len)
    if not new_len:
        return -errno.EINVAL
    if flags & MREMAP_FIXED:
        if new_addr % PAGE_SIZE or new_addr + new_len > TASK_SIZE:
            return -errno.EINVAL
        if new_addr < addr + old_len and addr < new_addr + new_len:
            return -errno.EINVAL
    vma = mm.find_vma(addr)
    if vma is None:
        return -errno.EFAULT
    if new_len > old_len and vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP):
        return -errno.EFAULT
    if addr + old_len > vma.vm_end:
        return -errno.EFAULT
    if not flags & MREMAP_FIXED:
        if new_len < old_len:
            do_munmap(mm, addr + new_len, old_len - new_len)
        return addr
    do_munmap(mm, new_addr, new_len)
    if new_len < old_len:
        do_munmap(mm, addr + new_len, old_len - new_len)
    for part in _isolate(mm, addr, addr + new_len):
        _move_vma(mm, part, new_addr + (part.vm_start - addr))
    return new_addr


def _move_vma(mm: "MM", vma: Vma, new_start: int) -> None:
    pt = mm.pgtable
    delta = new_start - vma.vm_start
    moved = []
    machine = mm.machine
    for leaf in list(pt.leaves(vma.vm_start, vma.vm_end)):
        target = leaf.va + delta
        if leaf.size == PUD_SIZE and machine.profile.mremap_huge_pud == "bad-pud":
            machine.klog.printk(f"mm/pgtable-generic.c:{machine.profile.bad_pud_line}: bad pud "
                                f"<ptr>({_x86_pud_value(leaf.pfn):016x})")
            continue
        if target % leaf.size:
            continue                    # a huge leaf that cannot move whole is split: gone
        moved.append((leaf.level, target, leaf.pfn))
    new = Vma(mm, new_start, new_start + (vma.vm_end - vma.vm_start), vma.vm_pgoff, vma.vm_flags, vma.vm_file,
              vma.vm_ops, vma.vm_private_data)
    pt.zap_range(vma.vm_start, vma.vm_end)
    if vma.vm_ops is not None and vma.vm_ops.close is not None:
        vma.vm_ops.close(vma)
    if vma.vm_file is not None:
        vma.vm_file.f_mapping.vma_unlink(vma)
    mm.remove_vma(vma)
    floor, ceiling = mm.neighbours(vma.vm_start, vma.vm_end)
    pt.free_tables(vma.vm_start, vma.vm_end, floor, ceiling)
    mm.insert_vma(new)
    if new.vm_file is not None:
        new.vm_file.f_mapping.vma_link(new)
    if new.vm_ops is not None and new.vm_ops.open is not None:
        new.vm_ops.open(new)            # copy_vma opens the new VMA before the entries move in
    for level, va, pfn in moved:
        {"pud": pt.set_pud, "pmd": pt.set_pmd, "pte": pt.set_pte}[level](va, pfn)


def _x86_pud_value(pfn: int) -> int:
    """The x86 entry of a special pfnmap PUD as vfio-pci installs it after a load:
    NX | pfn | PRESENT RW USER PCD ACCESSED PSE SPECIAL (pgprot_noncached of a shared RW VMA)."""
    return (1 << 63) | (pfn << PAGE_SHIFT) | 0x2B7
