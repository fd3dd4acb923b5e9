"""nvgrace-gpu: the vfio-pci variant for Grace-Hopper/Blackwell GPUs (docs/kernel-reference.md: nvgrace-gpu).

Device memory that is not in the kernel's memmap is exposed as two fake BARs: usemem
(region index 4, cached) and resmem (index 2, non-cached, only if memlength > 0), each
reported with a power-of-two size.  Generation 1 (profiles 6.12/6.15) maps the whole VMA
with PTEs at mmap time (remap_pfn_range, vm_pgoff = pfn, no fault handler); generation 2
(6.19, 7.0) faults with its own huge_fault and checks GPU readiness after a reset.
On 7.0 the regions are registered for poison handling when the device is opened.

It is written against the same driver contract as a third-party variant
(docs/driver-authors.md): it declares its scenario fields (usemem, resmem, pgoff_callback),
the memory of its fake BARs (region_extent), the ops table of their VMAs (region_vm_ops) and
its own history per kernel series, and is registered through the hugepfn.drivers entry point.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..mm.constants import (PAGE_SHIFT, PAGE_SIZE, VM_ALLOW_ANY_UNCACHED, VM_DONTDUMP, VM_DONTEXPAND, VM_IO,
                            VM_PFNMAP, VM_SHARED)
from ..mm.fault import VmFaultCtx
from ..mm.pfn_space import PfnAddressSpace
from ..mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_SIGBUS
from ..mm.vma import Vma, VmOperations
from ..scenario.fields import Field
from .pci import PciDevice
from .poison import CALLBACK_VARIANTS, check_variant
from .vfio_pci_core import (ULONG_MASK, VfioPciCoreDevice, is_aligned_for_order, vma_region_index,
                            vma_region_pgoff)

if TYPE_CHECKING:
    from ..machine import Machine

USEMEM_REGION_INDEX = 4     # VFIO_PCI_BAR4_REGION_INDEX
RESMEM_REGION_INDEX = 2     # VFIO_PCI_BAR2_REGION_INDEX
C2C_LINK_BAR0_OFFSET = 0x1498
HBM_TRAINING_BAR0_OFFSET = 0x200BC
STATUS_READY = 0xFF
POLL_QUANTUM_MS = 1000
POLL_TIMEOUT_MS = 30000
U64_MAX = (1 << 64) - 1
# The driver's own history (docs/kernel-reference.md: nvgrace-gpu): fault/huge_fault and the readiness check after reset since
# v6.19 (generation 2; before it, remap_pfn_range at mmap), its memory registered for poison
# handling at open since v7.0.
HUGE_FAULT_SINCE = (6, 19)
REGISTERS_MEMORY_SINCE = (7, 0)


MEMBLK_SIZE = 512 << 20        # usemem is a multiple of it when resmem is carved out (hardwired ABI)
RESMEM_SIZE = 1 << 30          # the carve-out on GPUs with the MIG hardware bug


def regions_from_firmware(memphys: int, memlength: int, mig_hw_bug: bool = True
                          ) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """nvgrace_gpu_init_nvdev_struct: (usemem, resmem) from the firmware's
    nvidia,gpu-mem-base-pa / nvidia,gpu-mem-size.  A GPU without the NVIDIA DVSEC that says
    "MIG supported with cached resmem" has the MIG hardware bug: 1 GiB is carved out as
    resmem at the end, usemem is rounded down to MEMBLK_SIZE and resmem takes the rest."""
    if not mig_hw_bug:
        return (memphys, memlength), None
    use = ((memlength - RESMEM_SIZE) // MEMBLK_SIZE) * MEMBLK_SIZE
    return (memphys, use), (memphys + use, memlength - use)


def roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


@dataclass
class MemRegion:
    """struct mem_region: device memory behind one fake BAR."""
    index: int
    memphys: int
    memlength: int

    @property
    def bar_size(self) -> int:
        """What REGION_INFO reports: memlength rounded up to a power of two."""
        return roundup_pow_of_two(self.memlength)

    @property
    def start_pfn(self) -> int:
        return self.memphys >> PAGE_SHIFT

    @property
    def nr_pages(self) -> int:
        return self.memlength >> PAGE_SHIFT


def _memory_field(name: str) -> Field:
    """usemem / resmem in a scenario: { memphys = ..., memlength = ... } -> (memphys, memlength)."""
    return Field(name, "table", required=False, default=None, fields=(Field("memphys"), Field("memlength")),
                 build=lambda t: (t["memphys"], t["memlength"]))


class NvgraceGpuDevice(VfioPciCoreDevice):
    driver_name = "nvgrace_gpu_vfio_pci"          # KBUILD_MODNAME of nvgrace-gpu-vfio-pci.ko
    has_reset_done = True                         # nvgrace_gpu_vfio_pci_reset_done
    nv_vm_ops_name = "nvgrace_gpu_vfio_pci_mmap_ops"     # its own ops; BARs keep the core's
    fields = (_memory_field("usemem"), _memory_field("resmem"),
              # the model's option: the merged callback ("literal") or one with the upper-bound
              # check its commit message describes ("fixed"); docs/kernel-reference.md: open questions
              Field("pgoff_callback", "str", required=False, default="literal", choices=CALLBACK_VARIANTS))

    def __init__(self, machine: "Machine", pdev: PciDevice, name: str | None = None,
                 usemem: tuple[int, int] | None = None, resmem: tuple[int, int] | None = None,
                 pgoff_callback: str = "literal") -> None:
        super().__init__(machine, pdev, name)
        self.usemem = MemRegion(USEMEM_REGION_INDEX, *usemem) if usemem else None
        self.resmem = MemRegion(RESMEM_REGION_INDEX, *resmem) if resmem and resmem[1] > 0 else None
        self.reset_done_flag = False
        self.callback_variant = check_variant(pgoff_callback)
        self.generation = 2 if self.profile.version >= HUGE_FAULT_SINCE else 1
        self.nv_vm_ops = VmOperations(self.nv_vm_ops_name, fault=self.nv_fault, huge_fault=self.nv_huge_fault)

    @classmethod
    def adopt_served_memory(cls, args: dict, memory: list[tuple[int, int, int]]) -> dict:
        """A served device without usemem/resmem: the driver takes device memory from firmware
        properties (base and size); for a served device that is where its first memory BAR was
        placed and the memory behind it, split as the driver splits it (regions_from_firmware:
        our devices have no DVSEC, so resmem is carved)."""
        if args.get("usemem") is None and args.get("resmem") is None and memory:
            _index, address, size = memory[0]
            use, res = regions_from_firmware(address, size)
            args = {**args, "usemem": use, "resmem": res}
        return args

    # -- regions ------------------------------------------------------------------------------
    def memregion(self, index: int) -> MemRegion | None:
        """nvgrace_gpu_memregion: usemem for index 4, resmem for index 2, else None."""
        if index == USEMEM_REGION_INDEX:
            return self.usemem
        if index == RESMEM_REGION_INDEX:
            return self.resmem
        return None

    def region_size(self, index: int) -> int:
        region = self.memregion(index)
        return region.bar_size if region is not None else super().region_size(index)

    def region_extent(self, index: int) -> tuple[int, int] | None:
        region = self.memregion(index)
        return (region.start_pfn, region.memlength) if region is not None else super().region_extent(index)

    def region_vm_ops(self, index: int) -> VmOperations | None:
        return self.nv_vm_ops if self.memregion(index) is not None else super().region_vm_ops(index)

    def vm_ops_tables(self) -> tuple[VmOperations, ...]:
        return (self.nv_vm_ops, self.vm_ops)

    def pgoff_callback(self, index: int, variant: str = "literal"):
        """Its own callback (as merged, below) for a memregion; the generic ones otherwise."""
        if self.memregion(index) is not None and check_variant(variant) == "literal":
            return self.pfn_to_vma_pgoff
        return super().pgoff_callback(index, variant)

    # -- open / registration (v7.0) ----------------------------------------------------------------
    def open_device(self) -> int:
        ret = super().open_device()
        if ret or self.profile.version < REGISTERS_MEMORY_SINCE:
            return ret
        for region in (self.resmem, self.usemem):
            if region is None:
                continue
            space = PfnAddressSpace(region.start_pfn, region.start_pfn + region.nr_pages - 1, self.mapping,
                                    self.pgoff_callback(region.index, self.callback_variant),
                                    failure=self.pfn_memory_failure, owner=self, region=region.index)
            ret = self.machine.register_pfn_address_space(space)
            if ret == -errno.EOPNOTSUPP:
                continue        # CONFIG_MEMORY_FAILURE=n stub: tolerated
            if ret:
                for done in self.registered:
                    self.machine.unregister_pfn_address_space(done)
                self.registered.clear()
                self.close_device()
                return ret
            self.registered.append(space)
        return 0

    def close_device(self) -> None:
        for space in self.registered:
            self.machine.unregister_pfn_address_space(space)
        self.registered.clear()
        super().close_device()

    def pfn_to_vma_pgoff(self, vma: Vma, pfn: int) -> tuple[int, int | None]:
        """nvgrace_gpu_pfn_to_vma_pgoff: file pgoff of ``pfn`` in ``vma``.  Like the kernel it
        checks only the lower bound against the VMA, not its end (docs/kernel-reference.md: nvgrace-gpu, open questions)."""
        if vma.vm_ops is not self.nv_vm_ops:
            return -errno.ENOENT, None
        region = self.memregion(vma_region_index(vma))
        if region is None:
            return -errno.EINVAL, None
        if not region.start_pfn <= pfn < region.start_pfn + region.nr_pages:
            return -errno.EFAULT, None
        pfn_off = pfn - region.start_pfn
        vma_off = vma_region_pgoff(vma)
        if pfn_off < vma_off:
            return -errno.EFAULT, None
        return 0, vma.vm_pgoff + (pfn_off - vma_off)

    # -- mmap ------------------------------------------------------------------------------------
    def mmap(self, vma: Vma) -> int:
        region = self.memregion(vma_region_index(vma))
        if region is None:
            return super().mmap(vma)
        if not vma.vm_flags & VM_SHARED:
            # the driver itself does not check; the pfn insert helpers would BUG on a
            # private writable PFNMAP, so the model refuses (docs/kernel-reference.md: open questions)
            return -errno.EINVAL
        pgoff = vma_region_pgoff(vma)
        req_len = vma.vm_end - vma.vm_start
        start_pfn = region.start_pfn + pgoff
        end = (pgoff << PAGE_SHIFT) + req_len
        if start_pfn > U64_MAX or end > U64_MAX:
            return -errno.EOVERFLOW
        if end > region.memlength:
            return -errno.EINVAL
        if region is self.resmem:
            vma.vm_flags |= VM_ALLOW_ANY_UNCACHED       # and write-combine page protection
        vma.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        vma.vm_private_data = self
        if self.generation == 1:
            self.remap_pfn_range(vma, start_pfn)
        else:
            vma.vm_ops = self.nv_vm_ops
        return 0

    def remap_pfn_range(self, vma: Vma, start_pfn: int) -> None:
        """Generation 1: every page mapped by a PTE now; vm_pgoff becomes the pfn."""
        vma.vm_pgoff = start_pfn
        vma.vm_mm.pgtable.set_pte_range(vma.vm_start, vma.vm_end, start_pfn)

    # -- faults (generation 2) ----------------------------------------------------------------------
    def nv_fault(self, vmf: VmFaultCtx) -> int:
        return self.nv_huge_fault(vmf, 0)

    def _fmt_nv_fault(self, order: int, pfn: int, ret: int) -> str:
        return f"{self.dev_prefix}nvgrace_gpu_vfio_pci_huge_fault order = {order} pfn {pfn:#x}: {ret:#x}"

    def nv_huge_fault(self, vmf: VmFaultCtx, order: int) -> int:
        """nvgrace_gpu_vfio_pci_huge_fault (docs/kernel-reference.md: nvgrace-gpu): no memregion -> SIGBUS silently; misaligned ->
        FALLBACK; runtime-PM engaged or not ready after reset -> SIGBUS silently; else the core
        insert helper.  The debug line is printed for FALLBACK and insert results.  With recorded
        poison (a proposal policy), Peter Xu's rule first (the core's poison_fault)."""
        if self.poison_record is not None:
            ret = self.poison_fault(vmf, order, self._report_nv_fault)
            if ret:
                return ret
        vma = vmf.vma
        region = self.memregion(vma_region_index(vma))
        if region is None:
            return VM_FAULT_SIGBUS
        addr = vmf.address & -(PAGE_SIZE << order)
        pfn = (region.start_pfn + vma_region_pgoff(vma) + (((addr - vma.vm_start) & ULONG_MASK) >> PAGE_SHIFT)) & ULONG_MASK
        ret = VM_FAULT_FALLBACK
        if is_aligned_for_order(vma, addr, pfn, order):
            lock = self.memory_lock
            lock.down_read()
            try:
                if self.pm_runtime_engaged or self.check_device_ready():
                    return VM_FAULT_SIGBUS
            finally:
                lock.up_read()
            ret = self.vmf_insert_pfn(vmf, pfn, order)
        if self.klog.dyndbg:
            self.klog.debug_ratelimited("nvgrace_gpu_vfio_pci_huge_fault", self._fmt_nv_fault, order, pfn, ret)
        return ret

    def _report_nv_fault(self, vmf: VmFaultCtx, order: int, addr: int, pfn: int, ret: int) -> None:
        self.klog.debug_ratelimited("nvgrace_gpu_vfio_pci_huge_fault", self._fmt_nv_fault, order, pfn, ret)

    # -- reset readiness -----------------------------------------------------------------------------
    def reset_done(self) -> None:
        if self.generation >= 2:
            self.reset_done_flag = True

    def wait_device_ready(self) -> int:
        """Poll the two BAR0 status registers every 1000 ms for up to 30 s (virtual time)."""
        clock = self.machine.clock
        deadline = clock.now_ms + POLL_TIMEOUT_MS
        while True:
            if (self.pdev.read_bar0(C2C_LINK_BAR0_OFFSET) == STATUS_READY
                    and self.pdev.read_bar0(HBM_TRAINING_BAR0_OFFSET) == STATUS_READY):
                return 0
            clock.msleep(POLL_QUANTUM_MS)
            if clock.now_ms > deadline:
                return -errno.ETIME

    def check_device_ready(self) -> int:
        """nvgrace_gpu_check_device_ready: only after a reset; memory off -> -EIO."""
        if not self.reset_done_flag:
            return 0
        if not self.memory_enabled():
            return -errno.EIO
        ret = self.wait_device_ready()
        if ret:
            return ret
        self.reset_done_flag = False
        return 0
