"""Host drivers: the vfio-pci core every variant builds on, and the registry of drivers by name
(entry points ``hugepfn.drivers``, driver modules, register_driver; host/drivers/registry.py)."""
from __future__ import annotations

from .pci import PciBar, PciDevice
from .registry import (DriverError, DriverRegistry, default_registry, load_driver_modules, register_driver,
                       unregister_driver)
from .vfio_pci_core import VfioPciCoreDevice, is_aligned_for_order, vma_region_index, vma_region_pgoff

__all__ = ["DriverError", "DriverRegistry", "PciBar", "PciDevice", "VfioPciCoreDevice", "default_registry",
           "is_aligned_for_order", "load_driver_modules", "register_driver", "unregister_driver",
           "vma_region_index", "vma_region_pgoff"]
