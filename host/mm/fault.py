"""handle_mm_fault: the __handle_mm_fault cascade PUD -> PMD -> PTE (docs/kernel-reference.md: fault cascade).

A huge attempt happens only when its slot is empty and the order is allowed; FALLBACK
goes one level down, any other result ends the fault.  The PMD table is allocated as soon
as the cascade passes the PUD level (so a PUD mapping cannot come back for that 1 GiB);
a PTE table only when a PTE is installed.  The hot path is plain int arithmetic; driver
calls are recorded only when the caller passes a ``calls`` list.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..driver_error import bad_fault_result
from .constants import PAGE_MASK, PAGE_SHIFT, PMD_ORDER, PMD_SHIFT, PUD_ORDER, PUD_SHIFT
from .pagetable import INDEX_MASK, TABLE_SHIFT, PmdTable
from .thp import PMD_BIT, PUD_BIT, thp_vma_allowable_orders
from .vm_fault import VM_FAULT_FALLBACK, VM_FAULT_OOM, VM_FAULT_RETRY, VM_FAULT_SIGBUS

if TYPE_CHECKING:
    from .vma import Vma

FAULT_FLAG_WRITE = 0x01
FAULT_FLAG_USER = 0x40


class _VmFaultFields(NamedTuple):
    vma: "Vma"
    address: int
    real_address: int
    pgoff: int
    flags: int


class VmFaultCtx(_VmFaultFields):
    """struct vm_fault: ``address`` is page aligned, ``real_address`` the exact byte,
    ``pgoff`` the file page of ``address`` (linear_page_index).  Read-only, as a handler sees
    it; a tuple, so that the fault path builds one at C speed (``_new_tuple``)."""
    __slots__ = ()

    def __new__(cls, vma: "Vma", real_address: int, flags: int = FAULT_FLAG_USER) -> "VmFaultCtx":
        address = real_address & PAGE_MASK
        return _new_tuple(cls, (vma, address, real_address, vma.vm_pgoff + ((address - vma.vm_start) >> PAGE_SHIFT),
                                flags))

    @property
    def write(self) -> bool:
        return bool(self.flags & FAULT_FLAG_WRITE)

    def __repr__(self) -> str:
        return f"<VmFaultCtx addr={self.address:#x} pgoff={self.pgoff:#x} flags={self.flags:#x}>"


_new_tuple = tuple.__new__      # a VmFaultCtx without a Python-level __new__ call (the hot path)


def handle_mm_fault(vma: "Vma", address: int, write: bool = False,
                    calls: list[tuple[int, int]] | None = None) -> int:
    """Resolve a user fault at ``address`` in ``vma`` as the arch fault handler does; returns
    the vm_fault_t.

    Kernels that take faults under the per-VMA lock first (``fault_vma_lock_retry``) run the
    cascade twice when the first pass reaches ->fault of a VMA without ->map_pages: that
    pass returns VM_FAULT_RETRY before calling the driver (vmf_can_call_fault), and the
    fault is retried under mmap_lock (do_user_addr_fault / do_page_fault).  Huge attempts
    of the first pass have been made by then, so the driver sees them twice.

    ``calls`` (optional) receives (order, result) for every driver call, in order.
    The machine settings (THP mode, arch, profile) come from ``vma.vm_mm.machine``.
    """
    mm = vma.vm_mm
    mm.nr_faults += 1
    if mm.machine.profile.fault_vma_lock_retry:
        ret = _handle_mm_fault(vma, address, write, calls, True)
        if not ret & VM_FAULT_RETRY:
            return ret
    return _handle_mm_fault(vma, address, write, calls, False)


def _handle_mm_fault(vma: "Vma", address: int, write: bool, calls: list[tuple[int, int]] | None,
                     vma_lock: bool) -> int:
    """__handle_mm_fault; ``vma_lock``: FAULT_FLAG_VMA_LOCK is set."""
    mm = vma.vm_mm
    machine = mm.machine
    addr = address & PAGE_MASK
    vmf = _new_tuple(VmFaultCtx, (vma, addr, address, vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT),
                                  FAULT_FLAG_USER | FAULT_FLAG_WRITE if write else FAULT_FLAG_USER))
    pt = mm.pgtable
    ops = vma.vm_ops
    huge_fault = ops.huge_fault if ops is not None else None
    allowed = -1        # the gate is evaluated only when a huge slot is empty (-1: not yet)

    # PUD level
    pud_idx = addr >> PUD_SHIFT
    table = pt.pmd_tables.get(pud_idx)
    if table is None:
        puds = pt.pud_tables.get(pud_idx >> TABLE_SHIFT)
        if puds is not None and puds[pud_idx & INDEX_MASK]:
            return 0                        # huge leaf present: refresh accessed bit only
        allowed = thp_vma_allowable_orders(vma, machine.thp, machine.thp_sysfs_gates_pfnmap, machine.thp_hw)
        if allowed & PUD_BIT:
            # create_huge_pud: only arches with THP-PUD reach the driver
            if huge_fault is not None and machine.arch.pud_pfnmap:
                ret = huge_fault(vmf, PUD_ORDER)
                if calls is not None:
                    calls.append((PUD_ORDER, ret))
                try:
                    if not ret & VM_FAULT_FALLBACK:
                        return ret
                except TypeError:
                    raise bad_fault_result(vma, "huge_fault", PUD_ORDER, address, ret) from None
        if pud_idx in pt.pud_leaves:        # a driver that installed and still said FALLBACK
            return 0
        if pt.fail_allocs and pt.alloc_fails():
            return VM_FAULT_OOM             # pmd_alloc failed
        table = pt.pmd_tables[pud_idx] = PmdTable()     # pmd_alloc

    # PMD level
    pmd_idx = addr >> PMD_SHIFT
    if table.leaves[pmd_idx & INDEX_MASK]:
        return 0
    ptes = table.pte_tables.get(pmd_idx)
    if ptes is None:
        if allowed < 0:
            allowed = thp_vma_allowable_orders(vma, machine.thp, machine.thp_sysfs_gates_pfnmap, machine.thp_hw)
        if allowed & PMD_BIT and huge_fault is not None:
            ret = huge_fault(vmf, PMD_ORDER)
            if calls is not None:
                calls.append((PMD_ORDER, ret))
            try:
                if not ret & VM_FAULT_FALLBACK:
                    return ret
            except TypeError:
                raise bad_fault_result(vma, "huge_fault", PMD_ORDER, address, ret) from None
            if table.leaves[pmd_idx & INDEX_MASK]:
                return 0
    elif ptes[(addr >> PAGE_SHIFT) & INDEX_MASK]:
        return 0                            # present PTE: accessed/dirty update only

    # PTE level: do_fault -> vm_ops->fault (a VMA without one gets SIGBUS)
    fault = ops.fault if ops is not None else None
    if fault is None:
        return VM_FAULT_SIGBUS
    if vma_lock and ops.map_pages is None and allowed >= 0:
        # vmf_can_call_fault: retry under mmap_lock.  Only when this pass looked at an empty
        # huge slot (allowed was evaluated): the retry then repeats that attempt.  Otherwise
        # the retry walks the same tables to this same point and calls ->fault, which is what
        # follows here at once (the kernel's two passes, without walking twice).
        return VM_FAULT_RETRY
    ret = fault(vmf)
    if calls is not None:
        calls.append((0, ret))
    if ret.__class__ is not int and not isinstance(ret, int):
        raise bad_fault_result(vma, "fault", 0, address, ret)
    return ret
