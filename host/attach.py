"""Binding the host model's vfio-pci core to a device attached over vfio-user.

What a host does between "the device is on the bus" and "a process can mmap its BARs":
firmware sizes and places the BARs (hugepfn.host.vfio_user.firmware), then vfio-pci binds a
PCI device whose BAR resources are those bus addresses (so host pfns are the device's) and
whose BAR0 reads go over vfio-user.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .drivers.pci import PciBar, PciDevice
from .vfio_user.firmware import BarPlacement, assign_bar_addresses

if TYPE_CHECKING:
    from .drivers.vfio_pci_core import VfioPciCoreDevice
    from .machine import Machine
    from .vfio_user.client import VfioUserClient

_U32 = struct.Struct("<I")
REGISTER_BAR = 0
PCI_VENDOR_ID = 0x00


def host_pci_device(client: "VfioUserClient", placements: dict[int, BarPlacement], bdf: str = "0000:01:00.0",
                    **pci_args: Any) -> PciDevice:
    """The host's view of the attached function: BAR resources at the placed bus addresses,
    vendor/device from its config space, BAR0 register reads over vfio-user."""
    ids = client.config_read(PCI_VENDOR_ID, 4)
    return PciDevice(bdf=bdf, bars={i: PciBar(i, p.address, p.size) for i, p in placements.items()},
                     vendor=ids & 0xFFFF, device=ids >> 16,
                     bar0_read32=lambda offset: _U32.unpack(client.region_read(REGISTER_BAR, offset, 4))[0],
                     **pci_args)


def attach_vfio_user(machine: "Machine", name: str, client: "VfioUserClient", driver: str = "vfio-pci",
                     bdf: str = "0000:01:00.0", **driver_args: Any
                     ) -> tuple["VfioPciCoreDevice", dict[int, BarPlacement]]:
    """Place the BARs of the attached device and open it in ``machine`` as device ``name``."""
    placements = {p.index: p for p in assign_bar_addresses(client)}
    pdev = host_pci_device(client, placements, bdf)
    return machine.add_device(name, driver, bdf, pdev=pdev, **driver_args), placements
