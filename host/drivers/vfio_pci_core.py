"""The vfio-pci core driver: BAR mmap checks, the huge_fault handler per kernel profile,
the insert helper variants reuse, and the zaps on memory-disable / reset / low-power.

Variant drivers subclass VfioPciCoreDevice and override only what differs
(docs/driver-authors.md).  What a variant declares — its scenario fields, the vm_operations
tables its mmap installs, where its regions' memory is — and how it hears of poison (the
pfn_address_space it registers, with pfn_to_vma_pgoff and the failure notification) are
methods and class attributes here, so the generic code asks the driver and never its type.
Kernel references: docs/kernel-reference.md: vfio-pci huge_fault, debug lines, vfio-pci mmap, zaps.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from hugepfn.abi.pci import PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_PM_CTRL_STATE_MASK
from hugepfn.abi.vfio import VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_ROM_REGION_INDEX

from ..mm.constants import (PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER, VFIO_PCI_OFFSET_SHIFT,
                            VFIO_PCI_PGOFF_MASK, VFIO_PCI_PGOFF_SHIFT, VM_ALLOW_ANY_UNCACHED, VM_DONTDUMP,
                            VM_DONTEXPAND, VM_IO, VM_MIXEDMAP, VM_PFNMAP, VM_SHARED)
from ..mm.fault import VmFaultCtx
from ..mm.insert import vmf_insert_pfn, vmf_insert_pfn_pmd, vmf_insert_pfn_pud
from ..mm.mapping import AddressSpace, File
from ..mm.pfn_space import PfnAddressSpace
from ..mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_HWPOISON, VM_FAULT_NOPAGE, VM_FAULT_SIGBUS
from ..mm.vma import Vma, VmOperations
from ..mm.zap import VmaZap, unmap_mapping_range, zap_vma_range
from .pci import PCI_D0, PCI_D3hot, PMCSR_OFFSET, PciDevice
from .poison import PoisonRecord, check_variant, pgoff_callback

if TYPE_CHECKING:
    from ..machine import Machine
    from ..scenario.fields import Field

# report(vmf, order, block address, pfn, ret): a driver's dynamic-debug line for a fault result
FaultReport = Callable[[VmFaultCtx, int, int, int, int], None]

COMMAND_WRITABLE = 0x07FF
ULONG_MASK = (1 << 64) - 1      # C unsigned long arithmetic: a negative offset wraps


def vfio_pci_index_to_offset(index: int) -> int:
    return index << VFIO_PCI_OFFSET_SHIFT


def vma_region_index(vma: Vma) -> int:
    return vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT


def vma_region_pgoff(vma: Vma) -> int:
    """Page offset of the VMA's start inside its region (low 28 bits of vm_pgoff)."""
    return vma.vm_pgoff & VFIO_PCI_PGOFF_MASK


def is_aligned_for_order(vma: Vma, addr: int, pfn: int, order: int) -> bool:
    """include/linux/vfio_pci_core.h: order 0 always; else the order-sized block at ``addr``
    lies inside the VMA and ``pfn`` is order-aligned."""
    if not order:
        return True
    size = PAGE_SIZE << order
    return addr >= vma.vm_start and addr + size <= vma.vm_end and not pfn & ((1 << order) - 1)


class RwSemaphore:
    """memory_lock as state: the model is single-threaded, so the lock records who holds it
    and how often it was taken; a fault while it is write-held would deadlock (assert)."""
    __slots__ = ("readers", "writer", "read_acquisitions", "write_acquisitions")

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        self.read_acquisitions = 0
        self.write_acquisitions = 0

    def down_read(self) -> None:
        if self.writer:
            raise RuntimeError("memory_lock: down_read while held for write (would deadlock)")
        self.readers += 1
        self.read_acquisitions += 1

    def up_read(self) -> None:
        self.readers -= 1

    def down_write(self) -> None:
        if self.writer or self.readers:
            raise RuntimeError("memory_lock: down_write while held (would deadlock)")
        self.writer = True
        self.write_acquisitions += 1

    def up_write(self) -> None:
        self.writer = False


class VfioPciCoreDevice:
    """struct vfio_pci_core_device: one opened vfio-pci device with its own inode mapping."""

    driver_name = "vfio-pci"                       # the dev_dbg prefix's driver part
    vm_ops_name = "vfio_pci_mmap_ops"
    # The [[device]] fields of scenario files this driver adds (typed, with defaults, validated
    # like the built-in ones); their values are keyword arguments of the constructor.
    fields: ClassVar[tuple["Field", ...]] = ()

    def __init__(self, machine: "Machine", pdev: PciDevice, name: str | None = None) -> None:
        self.machine = machine
        self.pdev = pdev
        self.name = name or pdev.bdf
        self.registered_as = self.driver_name      # the registry name add_device bound it by
        self.profile = machine.profile
        self.klog = machine.klog
        self.mapping = AddressSpace(host=self, name=f"vfio {pdev.bdf}")
        self.file = File(self.mapping, self, name=f"vfio-device {pdev.bdf}")
        self.memory_lock = RwSemaphore()
        self.pm_runtime_engaged = False
        self.is_open = False
        self.barmap: set[int] = set()
        self.num_regions = 0       # device-specific regions after VFIO_PCI_NUM_REGIONS
        if self.profile.vfio_fault == "remap-vma":
            # before huge pfnmaps (6.1 .. 6.11): the first fault maps the whole VMA, the driver
            # keeps a list of the VMAs it populated and zaps those (vfio_pci_zap_and_vma_lock)
            self.vm_ops = VmOperations(self.vm_ops_name, fault=self.fault_whole_vma,
                                       open=self.mmap_open, close=self.mmap_close)
        else:
            self.vm_ops = VmOperations(self.vm_ops_name, fault=self.fault, huge_fault=self.huge_fault,
                                       fault_run=self.fault_run if self._faults_are_the_core_s() else None)
        self.vma_list: list[Vma] = []
        self.dev_prefix = f"{self.driver_name} {pdev.bdf}: "
        self._align_faulting_page = self.profile.vfio_alignment == "page"
        self.registered: list[PfnAddressSpace] = []     # what this driver registered for memory failure
        self.poison_record: PoisonRecord | None = None  # created on the first poison report it records

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.pdev.bdf}>"

    # -- logging ------------------------------------------------------------------------------
    def dev_info(self, message: str) -> None:
        self.klog.printk(self.dev_prefix + message)

    def _fmt_huge_fault(self, order: int, index: int, pgoff: int, ret: int) -> str:
        return f"{self.dev_prefix}vfio_pci_mmap_huge_fault(,order = {order}) BAR {index} page offset {pgoff:#x}: {ret:#x}"

    # -- lifecycle ------------------------------------------------------------------------------
    def open_device(self) -> int:
        """vfio_pci_core_enable + finish_enable; the device starts in D0 with memory decode on."""
        self.is_open = True
        return 0

    def close_device(self) -> None:
        self.is_open = False

    # -- state ------------------------------------------------------------------------------------
    def memory_enabled(self) -> bool:
        """__vfio_pci_memory_enabled: below D3hot and (no_command_memory or COMMAND.MEMORY)."""
        pdev = self.pdev
        return pdev.current_state < PCI_D3hot and (pdev.no_command_memory or bool(pdev.command & PCI_COMMAND_MEMORY))

    def bar_mmap_supported(self, index: int) -> bool:
        """I/O and zero-size BARs are not mmap-able; a sub-page BAR is if it starts page aligned
        (vfio pads it with a dummy resource)."""
        bar = self.pdev.bar(index)
        if bar is None or bar.io or bar.size == 0:
            return False
        return bar.size >= PAGE_SIZE or bar.phys % PAGE_SIZE == 0

    def region_size(self, index: int) -> int:
        bar = self.pdev.bar(index)
        return 0 if bar is None else bar.size

    # -- what the driver declares -----------------------------------------------------------------
    @classmethod
    def adopt_served_memory(cls, args: dict[str, Any], memory: list[tuple[int, int, int]]) -> dict[str, Any]:
        """The driver arguments for a device served over vfio-user, given its memory BARs as
        (BAR index, bus address firmware placed it at, bytes of memory): the core needs nothing."""
        return args

    def region_extent(self, index: int) -> tuple[int, int] | None:
        """(first pfn, length in bytes) of region ``index``'s memory, or None (no such memory,
        I/O or empty BAR).  The core's regions are its BARs."""
        bar = self.pdev.bars.get(index)
        if bar is None or bar.io or bar.size == 0:
            return None
        return bar.phys >> PAGE_SHIFT, bar.size

    def region_vm_ops(self, index: int) -> VmOperations | None:
        """The vm_operations table mmap installs for region ``index`` (None: not mmap-able)."""
        return self.vm_ops if 0 <= index < VFIO_PCI_ROM_REGION_INDEX else None

    def vm_ops_tables(self) -> tuple[VmOperations, ...]:
        """Every vm_operations table this driver's VMAs can carry."""
        return (self.vm_ops,)

    def region_pfn(self, index: int, offset: int) -> int | None:
        """pfn of byte ``offset`` of region ``index``, or None if outside it."""
        extent = self.region_extent(index)
        if extent is None or offset >= extent[1]:
            return None
        return extent[0] + (offset >> PAGE_SHIFT)

    def vma_base_pfn(self, vma: Vma) -> int | None:
        """pfn mapped at vma.vm_start, computed as the driver does (region start + VMA offset)."""
        extent = self.region_extent(vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT)
        return None if extent is None else extent[0] + (vma.vm_pgoff & VFIO_PCI_PGOFF_MASK)

    def pfn_file_offset(self, pfn: int) -> int | None:
        """The file offset (region index << 40 | offset in the region) that maps ``pfn``, for
        ``zap``; None when no region of this device holds it."""
        for index in range(VFIO_PCI_ROM_REGION_INDEX):
            extent = self.region_extent(index)
            if extent is not None and extent[0] <= pfn < extent[0] + (extent[1] >> PAGE_SHIFT):
                return vfio_pci_index_to_offset(index) + ((pfn - extent[0]) << PAGE_SHIFT)
        return None

    # -- poison: the registration and the notification ------------------------------------------------
    def pgoff_callback(self, index: int, variant: str = "literal"):
        """The pfn_to_vma_pgoff this driver registers for region ``index``: "literal" checks the
        pfn against the VMA's start only (as v7.0's merged callback does), "fixed" its end too."""
        return pgoff_callback(self, self.region_vm_ops(index), check_variant(variant) == "fixed")

    def pfn_address_space(self, index: int, variant: str = "literal") -> PfnAddressSpace | None:
        """The pfn_address_space of region ``index`` (its pfns, this device's file mapping, the
        pgoff callback and the failure notification); None if the region has no memory."""
        extent = self.region_extent(index)
        if extent is None:
            return None
        start, last = extent[0], extent[0] + max(extent[1] >> PAGE_SHIFT, 1) - 1
        return PfnAddressSpace(start, last, self.mapping, self.pgoff_callback(index, variant),
                               failure=self.pfn_memory_failure, owner=self, region=index)

    def pfn_memory_failure(self, space: PfnAddressSpace, pfn: int) -> str | None:
        """The failure notification of a registered space (``ops->failure`` of the 2023
        proposals): memory_failure_pfn calls it for every registered space holding ``pfn``,
        after collecting the processes and before signalling them.  Returns the action token
        of the event ("signalled", "zapped", "split", or the driver's own).

        The core follows the machine's poison policy (hugepfn.host.memory_failure.policies):
        ``upstream`` does nothing (v7.0 drivers have no such notification), ``hard-offline``
        records the pfn and zaps its page, ``split`` records it and splits the covering leaf.
        A variant overrides this to do what it wants, with the same building blocks."""
        return self.machine.memory_failure.policy.failure(self, space, pfn)

    def record_poison(self, pfn: int) -> bool:
        """Remember ``pfn`` as bad (the PoisonRecord the fault handlers consult); False if known."""
        record = self.poison_record
        if record is None:
            record = self.machine.memory_failure.driver_state(self)
        return record.record(pfn)

    def poison_fault(self, vmf: VmFaultCtx, order: int, report: FaultReport) -> int:
        """Peter Xu's rule for recorded poison (docs/kernel-reference.md: poison policies), as a
        building block for huge_fault: order > 0 and [pfn, pfn + 2^order) holds a recorded pfn -> VM_FAULT_FALLBACK
        (never HWPOISON: that would end the fault and SIGBUS clean pages); order 0 on a recorded
        pfn -> VM_FAULT_HWPOISON; else 0 (the driver's own handler decides).  ``report`` prints
        the driver's debug line for the result it returns."""
        record = self.poison_record
        if record is None or not record.pfns:
            return 0
        vma = vmf.vma
        base = self.vma_base_pfn(vma)
        if base is None:
            return 0
        if order:
            addr = vmf.address & -(PAGE_SIZE << order)
            pfn = base + ((addr - vma.vm_start) >> PAGE_SHIFT)
            if not record.pfns.any_in(pfn, pfn + (1 << order)):
                return 0
            record.fallbacks += 1
            if self.klog.dyndbg:
                report(vmf, order, addr, pfn & ULONG_MASK, VM_FAULT_FALLBACK)
            return VM_FAULT_FALLBACK
        pfn = base + ((vmf.address - vma.vm_start) >> PAGE_SHIFT)
        if pfn not in record.pfns:
            return 0
        record.hwpoison_faults += 1
        if self.klog.dyndbg:
            report(vmf, 0, vmf.address, pfn, VM_FAULT_HWPOISON)
        owner = vma.vm_mm.owner
        if owner is not None:
            self.machine.memory_failure.consumed_by_fault(owner, pfn)
        return VM_FAULT_HWPOISON

    def _report_fault(self, vmf: VmFaultCtx, order: int, addr: int, pfn: int, ret: int) -> None:
        """vfio_pci_mmap_huge_fault's debug line for a result poison_fault returned."""
        vma = vmf.vma
        if self._align_faulting_page:
            pgoff = vmf.pgoff - vma.vm_pgoff
        else:
            pgoff = ((addr - vma.vm_start) & ULONG_MASK) >> PAGE_SHIFT
        self.klog.debug_ratelimited("vfio_pci_mmap_huge_fault", self._fmt_huge_fault, order,
                                    vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT, pgoff, ret)

    def vma_to_pfn(self, vma: Vma) -> int:
        pgoff = vma.vm_pgoff
        return (self.pdev.bars[pgoff >> VFIO_PCI_PGOFF_SHIFT].phys >> PAGE_SHIFT) + (pgoff & VFIO_PCI_PGOFF_MASK)

    def setup_barmap(self, index: int) -> int:
        """pci_request_selected_regions + pci_iomap (may fail -EBUSY / -ENOMEM in the kernel)."""
        self.barmap.add(index)
        return 0

    # -- mmap ---------------------------------------------------------------------------------
    def mmap(self, vma: Vma) -> int:
        """vfio_pci_core_mmap: the checks of docs/kernel-reference.md: vfio-pci mmap, in order; nothing is mapped here."""
        index = vma_region_index(vma)
        if index >= VFIO_PCI_NUM_REGIONS + self.num_regions:
            return -errno.EINVAL
        if vma.vm_end < vma.vm_start:
            return -errno.EINVAL
        if not vma.vm_flags & VM_SHARED:
            return -errno.EINVAL
        if index >= VFIO_PCI_NUM_REGIONS:
            return self.region_mmap(index, vma)
        if index >= VFIO_PCI_ROM_REGION_INDEX:
            return -errno.EINVAL
        if not self.bar_mmap_supported(index):
            return -errno.EINVAL
        phys_len = (self.region_size(index) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        req_len = vma.vm_end - vma.vm_start
        req_start = vma_region_pgoff(vma) << PAGE_SHIFT
        if req_start + req_len > phys_len:
            return -errno.EINVAL
        if index not in self.barmap:
            ret = self.setup_barmap(index)
            if ret:
                return ret
        vma.vm_private_data = self
        vma.vm_flags |= VM_ALLOW_ANY_UNCACHED | VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        vma.vm_ops = self.vm_ops
        if self.profile.vfio_fault == "remap-vma":
            vma.vm_pgoff = self.vma_to_pfn(vma)     # 6.1: vm_pgoff holds the pfn, not the region
        return 0

    # -- 6.1 .. 6.11: the whole VMA on the first fault --------------------------------------------
    def fault_whole_vma(self, vmf: VmFaultCtx) -> int:
        """vfio_pci_mmap_fault (6.1): SIGBUS while memory is off or low power is engaged; a VMA
        already on the list was populated (NOPAGE, nothing to do); else io_remap_pfn_range of
        the whole VMA and the VMA goes on the list."""
        if self.poison_record is not None:
            ret = self.poison_fault(vmf, 0, self._report_fault)
            if ret:
                return ret
        vma = vmf.vma
        self.memory_lock.read_acquisitions += 1
        if self.pm_runtime_engaged or not self.memory_enabled():
            return VM_FAULT_SIGBUS
        if any(v is vma for v in self.vma_list):
            return VM_FAULT_NOPAGE
        vma.vm_mm.pgtable.set_pte_range(vma.vm_start, vma.vm_end, vma.vm_pgoff)
        if self.machine.memtypes is not None:
            self.machine.memtypes.reserve(vma, vma.vm_pgoff)      # track_pfn_remap: the whole VMA
        self.vma_list.append(vma)
        return VM_FAULT_NOPAGE

    def mmap_open(self, vma: Vma) -> None:
        """vfio_pci_mmap_open: a copied or split-off VMA starts with its PTEs zapped (it is not
        on the list, so the next fault populates it)."""
        zap_vma_range(vma, vma.vm_start, vma.vm_end)

    def mmap_close(self, vma: Vma) -> None:
        self.vma_list = [v for v in self.vma_list if v is not vma]

    def region_mmap(self, index: int, vma: Vma) -> int:
        """A device-specific region's own mmap op; the core has none."""
        return -errno.EINVAL

    # -- faults ------------------------------------------------------------------------------------
    def fault(self, vmf: VmFaultCtx) -> int:
        """vfio_pci_mmap_page_fault = huge_fault(vmf, 0)."""
        return self.huge_fault(vmf, 0)

    def huge_fault(self, vmf: VmFaultCtx, order: int) -> int:
        """vfio_pci_mmap_huge_fault for the machine's kernel profile (docs/kernel-reference.md:
        vfio-pci huge_fault); with recorded poison, Peter Xu's rule first (poison_fault)."""
        if self.poison_record is not None:
            ret = self.poison_fault(vmf, order, self._report_fault)
            if ret:
                return ret
        vma = vmf.vma
        if self._align_faulting_page:
            # v6.12 .. v6.15-rc5: the faulting page itself must be order aligned
            pgoff = vmf.pgoff - vma.vm_pgoff
            pfn = self.vma_to_pfn(vma) + pgoff
            size = PAGE_SIZE << order
            if order and (vmf.address & (size - 1) or vmf.address + size > vma.vm_end
                          or pfn & ((1 << order) - 1)):
                ret = VM_FAULT_FALLBACK
            else:
                ret = self.vmf_insert_pfn(vmf, pfn, order)
        else:
            addr = vmf.address & -(PAGE_SIZE << order)
            pgoff = ((addr - vma.vm_start) & ULONG_MASK) >> PAGE_SHIFT
            pfn = (self.vma_to_pfn(vma) + pgoff) & ULONG_MASK
            if order and not is_aligned_for_order(vma, addr, pfn, order):
                ret = VM_FAULT_FALLBACK
            else:
                ret = self.vmf_insert_pfn(vmf, pfn, order)
        if self.klog.dyndbg:
            self.klog.debug_ratelimited("vfio_pci_mmap_huge_fault", self._fmt_huge_fault, order,
                                        vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT, pgoff, ret)
        return ret

    def vmf_insert_pfn(self, vmf: VmFaultCtx, pfn: int, order: int) -> int:
        """vfio_pci_vmf_insert_pfn: under memory_lock (read), SIGBUS if runtime-PM is engaged
        or memory is disabled, else the insert for the order (FALLBACK for an order the arch
        cannot map).  The memory-enable test is inlined: this is the fault hot path."""
        lock = self.memory_lock
        if lock.writer:
            raise RuntimeError("memory_lock: fault while held for write (would deadlock)")
        lock.read_acquisitions += 1
        pdev = self.pdev
        if (self.pm_runtime_engaged or pdev.current_state >= PCI_D3hot
                or not (pdev.is_virtfn or pdev.command_reg & PCI_COMMAND_MEMORY)):
            return VM_FAULT_SIGBUS
        if order == 0:
            return vmf_insert_pfn(vmf.vma, vmf.address, pfn)
        arch = self.machine.arch
        if order == PMD_ORDER and arch.pmd_pfnmap:
            return vmf_insert_pfn_pmd(vmf, pfn, False)
        if order == PUD_ORDER and arch.pud_pfnmap:
            return vmf_insert_pfn_pud(vmf, pfn, False)
        return VM_FAULT_FALLBACK

    def _faults_are_the_core_s(self) -> bool:
        """fault_run repeats this class's order-0 fault; a variant overriding it gets none."""
        cls = type(self)
        return all(getattr(cls, name) is getattr(VfioPciCoreDevice, name)
                   for name in ("fault", "huge_fault", "vmf_insert_pfn"))

    def fault_run(self, vma: Vma, addr: int, n: int, write: bool) -> int:
        """``fault`` for the n pages from ``addr`` (their PTEs empty, their PTE table present),
        in one go: the same PTEs, memory_lock read count and debug lines (VmOperations.fault_run).
        Declines (0) whenever the first fault would not return VM_FAULT_NOPAGE."""
        pdev = self.pdev
        if self.poison_record is not None and self.poison_record.pfns:
            return 0                        # recorded poison: each fault decides for itself
        if (self.memory_lock.writer or self.pm_runtime_engaged or pdev.current_state >= PCI_D3hot
                or not (pdev.is_virtfn or pdev.command_reg & PCI_COMMAND_MEMORY)    # as vmf_insert_pfn
                or vma.vm_flags & (VM_PFNMAP | VM_MIXEDMAP | VM_SHARED) != VM_PFNMAP | VM_SHARED
                or addr < vma.vm_start or addr + (n << PAGE_SHIFT) > vma.vm_end):
            return 0
        pgoff = (addr - vma.vm_start) >> PAGE_SHIFT
        pfn = (self.vma_to_pfn(vma) + pgoff) & ULONG_MASK
        self.memory_lock.read_acquisitions += n
        vma.vm_mm.pgtable.set_pte_range(addr, addr + (n << PAGE_SHIFT), pfn)
        if self.klog.dyndbg:
            index = vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
            passed = self.klog.debug_ratelimited_count("vfio_pci_mmap_huge_fault", n)
            for k in range(passed):
                self.klog.lazy(self._fmt_huge_fault, 0, index, pgoff + k, VM_FAULT_NOPAGE)
        return n

    # -- zap and the paths that use it --------------------------------------------------------------
    def zap_bars(self) -> list[VmaZap]:
        """vfio_pci_zap_bars: every BAR0..BAR5 mmap of this device (file offsets [0, ROM << 40)).
        Before 6.10 (vfio_pci_zap_and_vma_lock): only the VMAs on the driver's list, whole;
        the list empties (a VMA a fork copied was never on it and keeps its PTEs)."""
        if self.profile.vfio_fault == "remap-vma":
            out: list[VmaZap] = []
            for vma in self.vma_list:
                out += zap_vma_range(vma, vma.vm_start, vma.vm_end)
            self.vma_list.clear()
            return out
        return unmap_mapping_range(self.mapping, vfio_pci_index_to_offset(VFIO_PCI_BAR0_REGION_INDEX),
                                   vfio_pci_index_to_offset(VFIO_PCI_ROM_REGION_INDEX)
                                   - vfio_pci_index_to_offset(VFIO_PCI_BAR0_REGION_INDEX), True)

    def zap_and_down_write_memory_lock(self) -> list[VmaZap]:
        self.memory_lock.down_write()
        return self.zap_bars()

    def config_write(self, offset: int, size: int, value: int) -> int:
        """A write to the vfio config region: COMMAND with MEMORY clear zaps all BARs; PM_CTRL to
        D3hot zaps; other fields are virtualized (dropped here)."""
        if size not in (1, 2, 4) or offset < 0 or offset % size or offset + size > len(self.pdev.vconfig):
            return -errno.EINVAL
        if not 0 <= value < 1 << (8 * size):
            return -errno.EINVAL
        data = value.to_bytes(size, "little")
        if offset <= PCI_COMMAND < offset + size:
            cfg = bytearray(self.pdev.vconfig[PCI_COMMAND:PCI_COMMAND + 2])
            for i, b in enumerate(data):
                if PCI_COMMAND <= offset + i < PCI_COMMAND + 2:
                    cfg[offset + i - PCI_COMMAND] = b
            new_cmd = int.from_bytes(cfg, "little")
            if not new_cmd & PCI_COMMAND_MEMORY:
                self.zap_and_down_write_memory_lock()
            else:
                self.memory_lock.down_write()
            self.pdev.command = (self.pdev.command & ~COMMAND_WRITABLE) | (new_cmd & COMMAND_WRITABLE)
            self.memory_lock.up_write()
        if offset <= PMCSR_OFFSET < offset + size:
            state = data[PMCSR_OFFSET - offset] & PCI_PM_CTRL_STATE_MASK
            self.lock_and_set_power_state(state)
        return 0

    def lock_and_set_power_state(self, state: int) -> None:
        """vfio_lock_and_set_power_state: D3hot or lower zaps first."""
        if state >= PCI_D3hot:
            self.zap_and_down_write_memory_lock()
        else:
            self.memory_lock.down_write()
        self.pdev.current_state = state
        cfg = self.pdev.vconfig
        cfg[PMCSR_OFFSET] = (cfg[PMCSR_OFFSET] & ~PCI_PM_CTRL_STATE_MASK) | state
        self.memory_lock.up_write()

    def ioctl_reset(self) -> int:
        """VFIO_DEVICE_RESET: zap, force D0, reset (config state is saved and restored)."""
        if not self.pdev.reset_works:
            return -errno.EINVAL
        self.zap_and_down_write_memory_lock()
        try:
            self.pdev.current_state = PCI_D0
            self.pdev.reset_at_ms = self.machine.clock.now_ms
            return self.pci_reset_function()
        finally:
            self.memory_lock.up_write()

    # pci_error_handlers this driver has: without them the PCI core warns around a reset
    has_reset_prepare = False
    has_reset_done = False

    def pci_reset_function(self) -> int:
        """The function-level reset itself (pci_dev_save_and_disable, reset, pci_dev_restore);
        variants hook reset_done here."""
        warns = self.profile.pci_reset_warns
        if warns and not self.has_reset_prepare:
            self.dev_info("resetting")
        self.reset_done()
        if warns and not self.has_reset_done:
            self.dev_info("reset done")
        return 0

    def reset_done(self) -> None:
        """pci_error_handlers.reset_done; nothing for the core driver."""

    def low_power_entry(self) -> int:
        """VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: zap (even on the error path), then engage."""
        self.zap_and_down_write_memory_lock()
        try:
            if self.pm_runtime_engaged:
                return -errno.EINVAL
            self.pm_runtime_engaged = True
            return 0
        finally:
            self.memory_lock.up_write()

    def low_power_exit(self) -> int:
        self.memory_lock.down_write()
        self.pm_runtime_engaged = False
        self.memory_lock.up_write()
        return 0

    def zap(self, offset: int, length: int) -> list[VmaZap]:
        """unmap_mapping_range on this device's file (the scenario's `zap` step).  ``offset`` is
        a file offset: region index << 40 | offset in the region (pfn_file_offset gives it)."""
        return unmap_mapping_range(self.mapping, offset, length, True)
