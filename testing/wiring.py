"""The one place where the plugin joins a served device to the host model.

Two joins, both built from the project's own pieces:

* binding — a vfio-user client attaches to the served device; hugepfn.host.attach has
  firmware place the BARs and binds the host's driver to a PCI device whose BAR resources
  are those bus addresses (host pfns are the device's) and whose BAR0 reads go over vfio-user;
* the poison pipeline — the device queues a CPER record and raises its MSI-X error vector;
  hugepfn.host.ghes.GhesErrorSource reads the record over vfio-user, translates the address
  and calls memory_failure as a firmware-first (GHES) report would;
* the memory itself — the device's poison model answers for its memory BARs (where firmware
  placed them), so a load of a bad line machine-checks before any record is read.

A fixture that needs another binding or error source changes only this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hugepfn.host.attach import host_pci_device
from hugepfn.host.ghes import GhesErrorSource
from hugepfn.host.memory_failure import memory_failure_of
from hugepfn.host.memory_failure.hardware import device_memory
from hugepfn.host.mm.constants import PAGE_SHIFT
from hugepfn.host.vfio_user.client import VfioUserClient
from hugepfn.host.vfio_user.firmware import BarPlacement, assign_bar_addresses

if TYPE_CHECKING:
    from hugepfn.host.machine import Machine

    from .served import ServedDevice

PIPELINE = "hugepfn.host.attach + hugepfn.host.ghes (MSI-X error vector)"
# shared with served devices of scenarios (hugepfn.host.scenario.served): one firmware pass per
# device, each starting where the previous device's BARs end
MMIO_CURSOR_KEY = "served_mmio_cursor"


@dataclass
class BoundDevice:
    """A served device as the host sees it: ``host_device`` (the vfio-pci core device in the
    machine, named ``name``), the ``client`` connection and the firmware ``placements``."""
    name: str
    served: "ServedDevice"
    client: VfioUserClient
    host_device: object
    placements: dict[int, BarPlacement]
    error_source: object = None
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


def bind(machine: "Machine", served: "ServedDevice", name: str = "gpu", driver: str = "vfio-pci",
         bdf: str = "0000:01:00.0") -> BoundDevice:
    """Attach to ``served`` over vfio-user, place its BARs after those of devices attached
    before, and add it to ``machine`` as device ``name``."""
    client = VfioUserClient.attach(served.socket_path)
    try:
        cursor = machine.extensions.setdefault(MMIO_CURSOR_KEY, {})
        placements = {p.index: p for p in assign_bar_addresses(client, **cursor)}
        host_device = machine.add_device(name, driver, bdf, pdev=host_pci_device(client, placements, bdf))
        hardware = memory_failure_of(machine).hardware
        for memory in device_memory(served.device, placements):   # the device's poison is the truth
            hardware.add_device_memory(memory)
        for p in placements.values():
            key = "mmio64_base" if p.is_64bit else "mmio32_base"
            cursor[key] = max(cursor.get(key, 0), p.address + p.size)
    except BaseException:
        client.close()
        raise
    return BoundDevice(name, served, client, host_device, placements)


def error_source(machine: "Machine", bound: BoundDevice, publisher=None, mode: str = "async") -> GhesErrorSource:
    """The host's firmware-first error source for ``bound``, listening on the device's MSI-X
    error vector: ``mode`` "async" (memory_failure from a kworker) or "sync" (task work on the
    consuming thread); ``publisher`` gets one MemoryFailureEvent per record."""
    return GhesErrorSource(machine, bound.name, bound.client, mode=mode, publisher=publisher,
                           irq="msix", error_vector=bound.served.device.profile.error_vector,
                           mark_hardware=False)     # the device's own poison model answers loads
