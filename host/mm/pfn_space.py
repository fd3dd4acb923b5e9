"""struct pfn_address_space: a registration of device pfns for memory-failure handling (docs/kernel-reference.md: registration).

Only the record lives here (drivers build it); the registry and memory_failure_pfn live in
hugepfn.host.memory_failure.  ``pfn_to_vma_pgoff(vma, pfn)`` returns (0, pgoff) or (-errno, None)
(the callback v6.19-rc4 made mandatory).  ``failure(space, pfn)`` is the notification the 2023
proposals had (``pfn_address_space_ops.failure``): memory_failure_pfn tells the driver which pfn
went bad; it returns the action token of the event, or None.  v7.0 has no such callback; a driver
that leaves it None learns of poison only through the signals its users get.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .mapping import AddressSpace
    from .vma import Vma


@dataclass(eq=False)
class PfnAddressSpace:
    start: int                      # first pfn (inclusive)
    last: int                       # last pfn (inclusive)
    mapping: "AddressSpace"
    pfn_to_vma_pgoff: Callable[["Vma", int], tuple[int, int | None]] | None
    failure: Callable[["PfnAddressSpace", int], str | None] | None = None
    owner: Any = None               # the driver device that registered it
    region: int | None = None       # VFIO region index it describes
