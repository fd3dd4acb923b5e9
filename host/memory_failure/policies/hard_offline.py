"""hard-offline (proposal): Jiaqi Yan's `sysctl_enable_hard_offline` knob in memory_failure_pfn
plus Peter Xu's FALLBACK rule in the driver ("mm: Support huge pfnmaps" v2 thread, Aug 2024; docs/kernel-reference.md: poison policies).

On a report the driver records the pfn and the page is zapped with
unmap_mapping_range(mapping, pgoff << PAGE_SHIFT, PAGE_SIZE): a PUD/PMD leaf only partly covered
by the zap is removed whole (docs/kernel-reference.md: zaps).  The driver's fault filter (driver_state.py) then
returns FALLBACK from huge_fault for any range holding a recorded pfn and VM_FAULT_HWPOISON
for the poisoned page itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SIZE
from ...mm.zap import unmap_mapping_range
from .base import PoisonPolicy, space_offset

if TYPE_CHECKING:
    from ...mm.pfn_space import PfnAddressSpace
    from ..core import MemoryFailure


class HardOfflinePolicy(PoisonPolicy):
    name = "hard-offline"
    records_poison = True

    def on_memory_failure(self, mf: "MemoryFailure", space: "PfnAddressSpace", pfn: int) -> str:
        if space.owner is not None:
            mf.driver_state(space.owner).record(pfn, space)
        offset = space_offset(space, pfn)
        if offset is not None:
            unmap_mapping_range(space.mapping, offset, PAGE_SIZE, False)
        return "zapped"
