"""The one place where the plugin joins a served device to the host model.

Two joins:

* binding — a vfio-user client attaches to the served device, firmware places its BARs,
  and the host's vfio-pci core gets a PCI device whose BAR resources are those bus
  addresses (so host pfns are the device's) and whose BAR0 reads go over vfio-user;
* the poison pipeline — the device queues an error record and raises its error vector;
  a firmware-first (GHES-like) error source on the host reads the record over vfio-user,
  turns the device physical address into a host pfn and calls memory_failure.

Both prefer the project's own modules when they are installed (``hugepfn.host.vfio_user``
binding, ``hugepfn.device.control`` + ``hugepfn.host.ghes``) and otherwise use the small
local equivalents below; fixtures never know which.  ``PIPELINE`` says which is in use.
"""
from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hugepfn.device.cper import parse_record
from hugepfn.device.registers import REG_ERRQ_COUNT, REG_ERRQ_HEAD, REG_ERRQ_WINDOW
from hugepfn.host.drivers.pci import PciBar, PciDevice
from hugepfn.host.mm.constants import PAGE_SHIFT
from hugepfn.host.vfio_user.client import VfioUserClient
from hugepfn.host.vfio_user.firmware import BarPlacement, assign_bar_addresses

if TYPE_CHECKING:
    from hugepfn.device.cper import MemoryErrorRecord
    from hugepfn.host.machine import Machine
    from hugepfn.host.memory_failure.core import MfOutcome

    from .served import ServedDevice

_U32 = struct.Struct("<I")
REGISTER_BAR = 0


def _optional(module: str):
    """The module if this checkout has it, else None (a broken module still raises)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


_ghes = _optional("hugepfn.host.ghes")
_attach = _optional("hugepfn.host.attach")
PIPELINE = ("hugepfn.host.ghes" if _ghes is not None else "plugin-local GHES reader") + ", binding: " + \
    ("hugepfn.host.attach" if _attach is not None else "plugin-local")


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
    """Attach to ``served`` over vfio-user and add it to ``machine`` as device ``name``."""
    client = VfioUserClient.attach(served.socket_path)
    try:
        if _attach is not None:
            host_device, placements = _attach.attach_vfio_user(machine, name, client, driver, bdf)
        else:
            placements = {p.index: p for p in assign_bar_addresses(client)}
            pdev = PciDevice(bdf=bdf, bars={i: PciBar(i, p.address, p.size) for i, p in placements.items()},
                             vendor=served.device.profile.vendor_id, device=served.device.profile.device_id,
                             bar0_read32=lambda off: _U32.unpack(client.region_read(REGISTER_BAR, off, 4))[0])
            host_device = machine.add_device(name, driver, bdf, pdev=pdev)
    except BaseException:
        client.close()
        raise
    return BoundDevice(name, served, client, host_device, placements)


# -- the poison pipeline --------------------------------------------------------------------------
@dataclass
class RecordOutcome:
    """What the host did with one error record (the fields of hugepfn.host.ghes.ErrorOutcome
    the plugin reads): ``pfn`` of the record's address, ``pfns`` the record covers, ``ret`` of
    memory_failure (None: not called), ``signals``."""
    record: "MemoryErrorRecord"
    pfn: int | None = None
    pfns: range = range(0)
    ret: int | None = None
    signals: list = field(default_factory=list)


class LocalGhesReader:
    """Stand-in for hugepfn.host.ghes.GhesErrorSource (async mode) while that is not installed:
    drain BAR0's error queue over vfio-user; mark every page of the record bad in the hardware;
    before 6.19 GHES drops the !pfn_valid address; else memory_failure(pfn, 0) for the pfn of
    the record's address, from a kworker (early-kill threads get BUS_MCEERR_AO, nobody AR)."""

    def __init__(self, machine: "Machine", bound: BoundDevice) -> None:
        from hugepfn.host.memory_failure import memory_failure_of

        self.machine = machine
        self.bound = bound
        self.mf = memory_failure_of(machine)

    def read_records(self) -> list["MemoryErrorRecord"]:
        client = self.bound.client
        head = _U32.unpack(client.region_read(REGISTER_BAR, REG_ERRQ_HEAD, 4))[0]
        records = []
        for _ in range(_U32.unpack(client.region_read(REGISTER_BAR, REG_ERRQ_COUNT, 4))[0]):
            records.append(parse_record(client.region_read(REGISTER_BAR, REG_ERRQ_WINDOW, 256)))
            head = (head + 1) & 0xFFFFFFFF
            client.region_write(REGISTER_BAR, REG_ERRQ_HEAD, _U32.pack(head))
        return records

    def process_pending(self) -> list[RecordOutcome]:
        done = []
        journal = self.machine.tasks.journal
        for record in self.read_records():
            first = self.bound.bar_pfn(record.bar, record.bar_offset)
            out = RecordOutcome(record, pfns=range(first, self.bound.bar_pfn(record.bar, record.bar_offset
                                                                              + record.length - 1) + 1))
            for pfn in out.pfns:
                self.mf.hardware.poison(pfn)
            out.pfn = first
            if not self.mf.profile.pfnmap_memory_failure:
                phys = self.bound.bar_address(record.bar) + record.bar_offset
                self.machine.klog.printk(f"[Firmware Warn]: GHES: Invalid address in generic error data: {phys:#x}")
            else:
                mark = len(journal)
                out.ret = self.mf.memory_failure(first, 0, None)
                out.signals = journal[mark:]
            done.append(out)
        return done


def error_source(machine: "Machine", bound: BoundDevice, publisher=None):
    """The host's error source for ``bound`` (H8's GhesErrorSource when present)."""
    if _ghes is not None:
        return _ghes.GhesErrorSource(machine, bound.name, bound.client, publisher=publisher)
    return LocalGhesReader(machine, bound)
