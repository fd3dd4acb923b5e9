"""The policy interface.  A policy is what the core drivers do when a registered space's failure
notification tells them a pfn went bad (VfioPciCoreDevice.pfn_memory_failure): ``failure(device,
space, pfn)`` acts and returns the event's action token.  memory_failure_pfn calls the
notification for every registered space that contains the pfn (where Jiaqi Yan's sketch calls
ops->failure and the optional unmap), after collecting the processes and before signalling
them.  The policies are building blocks: a variant driver may call any of them from its own
notification, or do something else entirely."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mm.constants import PAGE_SHIFT, VFIO_PCI_PGOFF_SHIFT

if TYPE_CHECKING:
    from ...drivers.vfio_pci_core import VfioPciCoreDevice
    from ...mm.pfn_space import PfnAddressSpace


def space_pgoff(space: "PfnAddressSpace", pfn: int) -> int | None:
    """The file page that maps ``pfn`` in the device's VFIO file: region index << 28 plus the
    page offset in the region (every VMA of the region agrees on it)."""
    if space.region is None:
        return None
    return (space.region << VFIO_PCI_PGOFF_SHIFT) + (pfn - space.start)


def space_offset(space: "PfnAddressSpace", pfn: int) -> int | None:
    pgoff = space_pgoff(space, pfn)
    return None if pgoff is None else pgoff << PAGE_SHIFT


class PoisonPolicy:
    name = "upstream"
    records_poison = False          # does the driver remember poisoned pfns (for its fault handlers)?

    def failure(self, device: "VfioPciCoreDevice", space: "PfnAddressSpace", pfn: int) -> str:
        """What the driver does about ``pfn`` of ``space``; returns the event action token."""
        return "signalled"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
