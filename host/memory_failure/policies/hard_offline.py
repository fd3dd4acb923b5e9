"""hard-offline (proposal): Jiaqi Yan's `sysctl_enable_hard_offline` knob in memory_failure_pfn
plus Peter Xu's FALLBACK rule in the driver ("mm: Support huge pfnmaps" v2 thread, Aug 2024; docs/kernel-reference.md: poison policies).

On a report the driver records the pfn and the page is zapped with
unmap_mapping_range(mapping, pgoff << PAGE_SHIFT, PAGE_SIZE): a PUD/PMD leaf only partly covered
by the zap is removed whole (docs/kernel-reference.md: zaps).  The driver's fault handlers then (poison_fault in
host/drivers/vfio_pci_core.py) return FALLBACK from huge_fault for any range holding a recorded
pfn and VM_FAULT_HWPOISON for the poisoned page itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SIZE
from ...mm.zap import unmap_mapping_range
from .base import PoisonPolicy, space_offset

if TYPE_CHECKING:
    from ...drivers.vfio_pci_core import VfioPciCoreDevice
    from ...mm.pfn_space import PfnAddressSpace


def hard_offline(device: "VfioPciCoreDevice", space: "PfnAddressSpace", pfn: int) -> str:
    """Record ``pfn`` in ``device``'s poison record and zap the one page of the file that maps it."""
    device.record_poison(pfn)
    offset = space_offset(space, pfn)
    if offset is not None:
        unmap_mapping_range(space.mapping, offset, PAGE_SIZE, False)
    return "zapped"


class HardOfflinePolicy(PoisonPolicy):
    name = "hard-offline"
    records_poison = True

    def failure(self, device: "VfioPciCoreDevice", space: "PfnAddressSpace", pfn: int) -> str:
        return hard_offline(device, space, pfn)
