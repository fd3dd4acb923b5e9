"""The error of a variant driver that cannot be found, cannot be loaded or broke its contract.

A ValueError, so the CLI prints it as one line; the message names the driver.  It lives apart
from hugepfn.host.drivers so that the mm model can raise it without importing the drivers.
"""
from __future__ import annotations

from typing import Any


class DriverError(ValueError):
    """One line naming the driver and what went wrong."""


def driver_label(vma: Any) -> str:
    """The name a VMA's driver was bound by (add_device's driver name), else its ops table's."""
    device = getattr(vma, "vm_private_data", None)
    name = getattr(device, "registered_as", None)
    if name:
        return name
    ops = getattr(vma, "vm_ops", None)
    return getattr(ops, "name", "?")


def bad_fault_result(vma: Any, handler: str, order: int, address: int, ret: Any) -> DriverError:
    """A fault handler returned something that is not a vm_fault_t."""
    return DriverError(f"driver {driver_label(vma)}: {handler}(order {order}) at {address:#x} returned {ret!r}, "
                       "not a vm_fault_t (an int such as VM_FAULT_NOPAGE or VM_FAULT_FALLBACK)")
