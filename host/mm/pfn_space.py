"""struct pfn_address_space: a registration of device pfns for memory-failure handling (docs/kernel-reference.md: registration).

Only the record lives here (drivers build it); the registry and memory_failure_pfn live in
hugepfn.host.memory_failure.  ``pfn_to_vma_pgoff(vma, pfn)`` returns (0, pgoff) or (-errno, None).
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
    owner: Any = None               # the driver device that registered it
    region: int | None = None       # VFIO region index it describes
