"""The virtual memory area (struct vm_area_struct) and the operations a driver hangs on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .constants import PAGE_SHIFT, VM_SHARED, VmFlag

if TYPE_CHECKING:
    from .fault import VmFaultCtx
    from .mapping import File
    from .mm import MM


@dataclass(frozen=True)
class VmOperations:
    """vm_operations_struct: what the core mm calls for a file-backed VMA.

    ``fault(vmf) -> int`` handles an order-0 fault; ``huge_fault(vmf, order) -> int``
    handles PMD/PUD attempts (None: the VMA gets no huge faults, as without
    CONFIG_ARCH_SUPPORTS_HUGE_PFNMAP).  ``name`` is the kernel symbol of the ops table;
    a driver may compare it to recognise its own VMAs.

    ``fault_run(vma, addr, n, write) -> int`` is not a kernel operation but a shortcut of the
    model (host/mm/fault_run.py): the order-0 faults of ``n`` consecutive pages from ``addr``
    whose PTEs are empty in an existing PTE table, taken in one call with exactly the effects of
    ``n`` calls of ``fault``; it returns how many it took, stopping before the first page whose
    fault would not return VM_FAULT_NOPAGE (0: take them one by one).
    """
    name: str
    fault: Callable[["VmFaultCtx"], int] | None = None
    huge_fault: Callable[["VmFaultCtx", int], int] | None = None
    # ->map_pages (fault-around of page-cache pages): device pfnmaps have none, which is why
    # a fault under the per-VMA lock must be retried before ->fault is called
    map_pages: Callable | None = None
    # ->open / ->close (vm_area_struct copies and removals): 6.1 vfio-pci zaps a new VMA on open
    open: Callable[["Vma"], None] | None = None
    close: Callable[["Vma"], None] | None = None
    fault_run: Callable[["Vma", int, int, bool], int] | None = None


class Vma:
    """One VMA: [vm_start, vm_end) of ``vm_mm`` mapping file pages from ``vm_pgoff`` on."""

    __slots__ = ("vm_start", "vm_end", "vm_pgoff", "vm_flags", "vm_ops",
                 "vm_private_data", "vm_mm", "vm_file")

    def __init__(self, mm: "MM", start: int, end: int, pgoff: int, flags: int,
                 file: "File | None" = None, ops: VmOperations | None = None,
                 private_data: Any = None) -> None:
        self.vm_mm = mm
        self.vm_start = start
        self.vm_end = end
        self.vm_pgoff = pgoff
        self.vm_flags = flags
        self.vm_file = file
        self.vm_ops = ops
        self.vm_private_data = private_data

    @property
    def nr_pages(self) -> int:
        return (self.vm_end - self.vm_start) >> PAGE_SHIFT

    @property
    def pgoff_last(self) -> int:
        """Last file page this VMA maps (inclusive, like vma_last_pgoff)."""
        return self.vm_pgoff + self.nr_pages - 1

    @property
    def is_shared(self) -> bool:
        return bool(self.vm_flags & VM_SHARED)

    def contains(self, addr: int) -> bool:
        return self.vm_start <= addr < self.vm_end

    def linear_pgoff(self, addr: int) -> int:
        """File page index of ``addr`` (linear_page_index)."""
        return self.vm_pgoff + ((addr - self.vm_start) >> PAGE_SHIFT)

    def address_of(self, pgoff: int) -> int | None:
        """User address of file page ``pgoff`` in this VMA, or None if outside (vma_address)."""
        if pgoff < self.vm_pgoff:
            return None
        addr = self.vm_start + ((pgoff - self.vm_pgoff) << PAGE_SHIFT)
        return addr if addr < self.vm_end else None

    def __repr__(self) -> str:
        flags = "|".join(f.name for f in VmFlag if self.vm_flags & f)
        owner = getattr(self.vm_mm, "owner", None)
        pid = getattr(owner, "pid", "?")
        return (f"<Vma pid={pid} {self.vm_start:#x}-{self.vm_end:#x} pgoff={self.vm_pgoff:#x} "
                f"{flags} ops={self.vm_ops.name if self.vm_ops else None}>")
