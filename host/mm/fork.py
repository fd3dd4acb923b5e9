"""fork(2) and exit of a process, as far as its mappings go (dup_mmap, exit_mmap).

dup_mmap copies every VMA (none of a device mapping has VM_DONTCOPY or VM_WIPEONFORK),
links the copy into the file's i_mmap (so zaps and memory_failure see the child too),
calls vm_ops->open on it, then copies the page-table entries: vma_needs_copy is true for
VM_PFNMAP VMAs, and copy_huge_pud / copy_huge_pmd copy special huge leaves as they are.
The child's one thread inherits the forking thread's PF_MCE_* flags; the mm inherits
MMF_DISABLE_THP (MMF_INIT_MASK).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .mm import MM
from .vma import Vma

if TYPE_CHECKING:
    from ..machine import Machine

_SETTERS = ("set_pud", "set_pmd", "set_pte")


def fork_process(machine: "Machine", pid: int, child: int) -> int:
    parent = machine.tasks.process(pid)
    if child in machine.tasks.processes or child in machine.tasks.threads:
        return -errno.EAGAIN
    proc = machine.create_process(child, parent.comm, [child])
    proc.main_thread.flags = parent.main_thread.flags
    mm: MM = proc.mm
    mm.thp_disabled = parent.mm.thp_disabled
    mm.thp_except_advised = parent.mm.thp_except_advised
    src = parent.mm.pgtable
    for vma in list(parent.mm):
        new = Vma(mm, vma.vm_start, vma.vm_end, vma.vm_pgoff, vma.vm_flags, vma.vm_file, vma.vm_ops,
                  vma.vm_private_data)
        mm.insert_vma(new)
        if new.vm_file is not None:
            new.vm_file.f_mapping.vma_link(new)
        if new.vm_ops is not None and new.vm_ops.open is not None:
            new.vm_ops.open(new)
        for leaf in src.leaves(vma.vm_start, vma.vm_end):      # copy_page_range
            getattr(mm.pgtable, f"set_{leaf.level}")(leaf.va, leaf.pfn)
    return 0


def exit_process(machine: "Machine", pid: int) -> int:
    from .mmap import remove_vma

    proc = machine.tasks.process(pid)
    for vma in list(proc.mm):
        remove_vma(vma)
    machine.tasks.remove_process(pid)
    return 0
