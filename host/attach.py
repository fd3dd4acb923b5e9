"""Binding the host model's driver to a device served over vfio-user: the one helper the
scenarios' served devices and the pytest plugin use.

What a host does between "the device is on the bus" and "a process can mmap its BARs":
firmware sizes and places the BARs (hugepfn.host.vfio_user.firmware) after those of devices
attached before; the driver binds a PCI device whose BAR resources are those bus addresses (so
host pfns are the device's) and whose BAR0 reads go over vfio-user; when the device model runs in
this process, its poison model answers for its memory (a load of a bad line machine-checks before
any record is read).  ``error_source`` adds the firmware-first (GHES-like) error source that
reads the device's error records.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hugepfn.abi.pci import PCI_VENDOR_ID

from .drivers.pci import PciBar, PciDevice
from .mm.constants import PAGE_SHIFT
from .vfio_user.client import VfioUserClient
from .vfio_user.firmware import BarPlacement, assign_bar_addresses

if TYPE_CHECKING:
    from .drivers.vfio_pci_core import VfioPciCoreDevice
    from .ghes import GhesErrorSource
    from .machine import Machine

_U32 = struct.Struct("<I")
REGISTER_BAR = 0
# machine.extensions key: where the next device's BARs go (one firmware pass per device, each
# starting where the previous device's BARs end, so pfns of two devices never overlap)
MMIO_CURSOR_KEY = "served_mmio_cursor"


@dataclass
class BoundDevice:
    """A served device as the host sees it: ``host_device`` (the driver's device in the machine,
    named ``name``), the vfio-user ``client``, the firmware ``placements``, the ``error_source``
    once one is attached, and ``served`` (whatever the caller serves it with, or None)."""
    name: str
    client: VfioUserClient
    host_device: "VfioPciCoreDevice"
    placements: dict[int, BarPlacement]
    served: Any = None
    error_source: Any = None
    closed: bool = field(default=False, init=False)

    def bar_address(self, bar: int) -> int:
        """The bus address firmware gave BAR ``bar`` (the host's pci_resource_start)."""
        try:
            return self.placements[bar].address
        except KeyError:
            raise ValueError(f"BAR {bar} of {self.name} is not a memory BAR "
                             f"(placed BARs: {', '.join(map(str, sorted(self.placements)))})") from None

    def bar_pfn(self, bar: int, offset: int = 0) -> int:
        """The host pfn of byte ``offset`` of BAR ``bar``."""
        return (self.bar_address(bar) + offset) >> PAGE_SHIFT

    def _area(self, bar: int, offset: int, count: int):
        for area in self.client.map_region(bar):
            if area.offset <= offset and offset + count <= area.offset + area.size:
                return area, offset - area.offset
        raise ValueError(f"BAR {bar}: [{offset:#x}, {offset + count:#x}) is not inside one mmappable area")

    def host_write(self, bar: int, offset: int, data: bytes) -> None:
        """Store through the host's real mmap of the BAR (the client's MAP_SHARED mapping of the
        fd the server passed), as a process that mmaps the BAR writes it."""
        area, at = self._area(bar, offset, len(data))
        area.mapping[at:at + len(data)] = data

    def host_read(self, bar: int, offset: int, count: int) -> bytes:
        """Load through the host's real mmap of the BAR."""
        area, at = self._area(bar, offset, count)
        return area.mapping[at:at + count]

    def region_read(self, bar: int, offset: int, count: int) -> bytes:
        """REGION_READ over the vfio-user socket (the server's view of the memory)."""
        return self.client.region_read(bar, offset, count)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close = getattr(self.error_source, "close", None)
        if close is not None:
            close()
        self.client.close()


def host_pci_device(client: VfioUserClient, placements: dict[int, BarPlacement], bdf: str = "0000:01:00.0",
                    **pci_args: Any) -> PciDevice:
    """The host's view of the attached function: BAR resources at the placed bus addresses,
    vendor/device from its config space, BAR0 register reads over vfio-user."""
    ids = client.config_read(PCI_VENDOR_ID, 4)
    return PciDevice(bdf=bdf, bars={i: PciBar(i, p.address, p.size) for i, p in placements.items()},
                     vendor=ids & 0xFFFF, device=ids >> 16,
                     bar0_read32=lambda offset: _U32.unpack(client.region_read(REGISTER_BAR, offset, 4))[0],
                     **pci_args)


def bind_served(machine: "Machine", name: str, socket_path: str | os.PathLike, driver: str = "vfio-pci",
                bdf: str = "0000:01:00.0", device_model: Any = None, driver_args: dict | None = None,
                served: Any = None, **pci_args: Any) -> BoundDevice:
    """Attach to the vfio-user server on ``socket_path``, place its BARs after those of devices
    attached before, and bind ``driver`` to it in ``machine`` as device ``name`` at ``bdf``.

    ``device_model`` (a hugepfn.device.gpu.GpuDevice in this process, or None) answers for the
    poison of its memory BARs, and tells the driver where its memory is (adopt_served_memory).
    ``driver_args`` go to the driver; ``pci_args`` to the PCI device (is_virtfn, reset_works)."""
    from .memory_failure.hardware import device_memory

    client = VfioUserClient.attach(socket_path)
    try:
        cursor = machine.extensions.setdefault(MMIO_CURSOR_KEY, {})
        placements = {p.index: p for p in assign_bar_addresses(client, **cursor)}
        memory = [] if device_model is None else device_memory(device_model, placements)
        args = machine.drivers.get(driver).adopt_served_memory(
            dict(driver_args or {}), [(m.bar, m.address, m.size) for m in memory])
        pdev = host_pci_device(client, placements, bdf, **pci_args)
        host_device = machine.add_device(name, driver, bdf, pdev=pdev, **args)
        for area in memory:                 # the device's poison is the truth for its memory
            machine.memory_failure.hardware.add_device_memory(area)
        for p in placements.values():
            key = "mmio64_base" if p.is_64bit else "mmio32_base"
            cursor[key] = max(cursor.get(key, 0), p.address + p.size)
    except BaseException:
        client.close()
        raise
    return BoundDevice(name, client, host_device, placements, served)


def error_source(machine: "Machine", bound: BoundDevice, error_vector: int, mode: str = "async", irq: str = "msix",
                 publisher: Any = None) -> "GhesErrorSource":
    """The host's firmware-first error source for ``bound``, listening on the device's error
    interrupt (``irq`` "msix": MSI-X vector ``error_vector``; "err": the vfio ERR index):
    ``mode`` "async" (memory_failure from a kworker) or "sync" (task work on the consuming
    thread); ``publisher`` gets one MemoryFailureEvent per record."""
    from .ghes import GhesErrorSource

    bound.error_source = GhesErrorSource(machine, bound.name, bound.client, mode=mode, publisher=publisher, irq=irq,
                                         error_vector=error_vector,
                                         mark_hardware=False)     # the device's own poison model answers loads
    return bound.error_source
