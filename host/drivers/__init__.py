"""Host drivers: the vfio-pci core and its variants, by driver name."""
from __future__ import annotations

from .nvgrace_gpu import NvgraceGpuDevice
from .pci import PciBar, PciDevice
from .vfio_pci_core import VfioPciCoreDevice, is_aligned_for_order, vma_region_index, vma_region_pgoff

# driver name (as in a scenario's `driver = ...`) -> device class
DRIVERS: dict[str, type[VfioPciCoreDevice]] = {
    "vfio-pci": VfioPciCoreDevice,
    "nvgrace-gpu": NvgraceGpuDevice,
}


def register_driver(name: str, cls: type[VfioPciCoreDevice]) -> None:
    """Make a variant driver available to Machine.add_device and to scenarios by name."""
    if not (isinstance(cls, type) and issubclass(cls, VfioPciCoreDevice)):
        raise TypeError("a driver must subclass VfioPciCoreDevice")
    DRIVERS[name] = cls
