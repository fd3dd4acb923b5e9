"""The pfn insert helpers a fault handler calls: vmf_insert_pfn, vmf_insert_pfn_pmd/_pud (docs/kernel-reference.md: insert helpers).

Each returns a vm_fault_t (plain int).  The BUG() conditions of the kernel raise KernelBug:
a driver that trips them is broken, not a user input error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import (PAGE_SHIFT, PMD_MASK, PMD_SHIFT, PUD_MASK, PUD_SHIFT, VM_MAYWRITE, VM_MIXEDMAP,
                        VM_PFNMAP, VM_SHARED)
from .pagetable import INDEX_MASK, TABLE_SHIFT, PmdTable, new_table
from .vm_fault import VM_FAULT_NOPAGE, VM_FAULT_OOM, VM_FAULT_SIGBUS

if TYPE_CHECKING:
    from .fault import VmFaultCtx
    from .vma import Vma


class KernelBug(RuntimeError):
    """A BUG_ON() in the kernel: the caller violated a kernel contract."""


_SPECIAL = VM_PFNMAP | VM_MIXEDMAP
_FAST_MASK = VM_PFNMAP | VM_MIXEDMAP | VM_SHARED
_FAST_OK = VM_PFNMAP | VM_SHARED


def _check_vma(vma: "Vma") -> None:
    flags = vma.vm_flags
    special = flags & _SPECIAL
    if not special:
        raise KernelBug(f"BUG: pfn insert into a VMA without VM_PFNMAP or VM_MIXEDMAP: {vma!r}")
    if special == _SPECIAL:
        raise KernelBug(f"BUG: pfn insert into a VMA with both VM_PFNMAP and VM_MIXEDMAP: {vma!r}")
    if flags & VM_PFNMAP and (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE:
        raise KernelBug(f"BUG: pfn insert into a private writable (COW) PFNMAP VMA: {vma!r}")


def _pmd_table(pt, addr: int) -> PmdTable | int:
    """The PMD table under ``addr`` (allocated if the PUD slot is empty), or the result to
    return: NOPAGE when the walk stops at a huge PUD leaf, OOM when the allocation fails."""
    pud_idx = addr >> PUD_SHIFT
    table = pt.pmd_tables.get(pud_idx)
    if table is None:
        if pud_idx in pt.pud_leaves:
            return VM_FAULT_NOPAGE
        if pt.fail_allocs and pt.alloc_fails():
            return VM_FAULT_OOM
        table = pt.pmd_tables[pud_idx] = PmdTable()
    return table


def vmf_insert_pfn(vma: "Vma", addr: int, pfn: int) -> int:
    """Install one special PTE at ``addr`` -> ``pfn``.  Outside the VMA: SIGBUS.  An existing
    PTE is left unchanged and NOPAGE is still returned.  (The x86 pfn_modify_allowed refusal
    only concerns PROT_NONE mappings, which the model does not create.)"""
    if vma.vm_flags & _FAST_MASK != _FAST_OK:      # the common shared PFNMAP case skips the checks
        _check_vma(vma)
    if addr < vma.vm_start or addr >= vma.vm_end:
        return VM_FAULT_SIGBUS
    pt = vma.vm_mm.pgtable
    table = pt.pmd_tables.get(addr >> PUD_SHIFT)
    if table is None:
        table = _pmd_table(pt, addr)
        if type(table) is int:
            return table                # a huge leaf stops the walk (nothing to do), or OOM
    pmd_idx = addr >> PMD_SHIFT
    ptes = table.pte_tables.get(pmd_idx)
    if ptes is None:
        if table.leaves[pmd_idx & INDEX_MASK]:
            return VM_FAULT_NOPAGE
        if pt.fail_allocs and pt.alloc_fails():
            return VM_FAULT_OOM         # get_locked_pte could not allocate the PTE table
        ptes = table.pte_tables[pmd_idx] = new_table()
    i = (addr >> PAGE_SHIFT) & INDEX_MASK
    if not ptes[i]:
        ptes[i] = pfn + 1               # an entry holds pfn + 1 (0 is pte_none)
    return VM_FAULT_NOPAGE


def vmf_insert_pfn_pmd(vmf: "VmFaultCtx", pfn: int, write: bool = False) -> int:
    """Install a 2 MiB special leaf at ``vmf.address & PMD_MASK``.  Only that address is checked
    against the VMA (the caller checks the whole 2 MiB fits).  A non-empty slot: unchanged,
    NOPAGE.  ``write`` is accepted for signature fidelity; entries take the VMA's protection."""
    vma = vmf.vma
    if vma.vm_flags & _FAST_MASK != _FAST_OK:
        _check_vma(vma)
    addr = vmf.address & PMD_MASK
    if addr < vma.vm_start or addr >= vma.vm_end:
        return VM_FAULT_SIGBUS
    pt = vma.vm_mm.pgtable
    table = pt.pmd_tables.get(addr >> PUD_SHIFT)     # the cascade allocated it on its way down
    if table is None:
        table = _pmd_table(pt, addr)
        if type(table) is int:
            return table
    pmd_idx = addr >> PMD_SHIFT
    if not table.leaves[pmd_idx & INDEX_MASK] and pmd_idx not in table.pte_tables:
        table.leaves[pmd_idx & INDEX_MASK] = pfn + 1
    return VM_FAULT_NOPAGE


def vmf_insert_pfn_pud(vmf: "VmFaultCtx", pfn: int, write: bool = False) -> int:
    """Install a 1 GiB special leaf at ``vmf.address & PUD_MASK`` (same rules as the PMD helper)."""
    vma = vmf.vma
    if vma.vm_flags & _FAST_MASK != _FAST_OK:
        _check_vma(vma)
    addr = vmf.address & PUD_MASK
    if addr < vma.vm_start or addr >= vma.vm_end:
        return VM_FAULT_SIGBUS
    pt = vma.vm_mm.pgtable
    pud_idx = addr >> PUD_SHIFT
    if pud_idx not in pt.pmd_tables:
        puds = pt.pud_tables.get(pud_idx >> TABLE_SHIFT)
        if puds is None:
            puds = pt.pud_tables[pud_idx >> TABLE_SHIFT] = new_table()     # the PUD table under the P4D
        if not puds[pud_idx & INDEX_MASK]:
            puds[pud_idx & INDEX_MASK] = pfn + 1
    return VM_FAULT_NOPAGE
