"""The contract between the device model and whatever serves it.

A served device (the emulated GPU in ``hugepfn.device``) is driven by a backend:
the project's own vfio-user engine (``backend python``) or libvfio-user through
cffi (``backend libvfio-user``).  Both backends see the device only through the
``ServedDevice`` protocol below, so the device never knows which one it has.

Failures are raised as ``OSError(errno, message)``; the backend turns the errno
into the wire reply in exactly one place.  The VFIO numbers (region and IRQ
indexes, flags) are declared in ``hugepfn.abi.vfio``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from hugepfn.abi.vfio import VFIO_IRQ_INFO_EVENTFD

@dataclass(frozen=True)
class SparseArea:
    """An mmap-able window of a region, relative to the region's start."""
    offset: int
    size: int


@dataclass(frozen=True)
class RegionInfo:
    """What DEVICE_GET_REGION_INFO reports for one region index.

    ``fd`` is the file a client may mmap (a memfd for memory BARs), or None for a
    region that is only reachable through REGION_READ/WRITE.  ``fd_offset`` is the
    base offset of the region inside that fd.  A region of size 0 does not exist.
    """
    index: int
    size: int
    flags: int
    fd: int | None = None
    fd_offset: int = 0
    sparse_areas: tuple[SparseArea, ...] = ()
    is_64bit: bool = False
    prefetchable: bool = False


@dataclass(frozen=True)
class IrqInfo:
    index: int
    count: int
    flags: int = VFIO_IRQ_INFO_EVENTFD


# Called by the device to raise interrupt ``vector`` of IRQ index ``index``
# (e.g. VFIO_PCI_MSIX_IRQ_INDEX, 3).  The backend owns the eventfds that
# SET_IRQS handed over and decides what raising means (eventfd_write,
# vfu_irq_trigger, or a pending bit when the client de-assigned it).
InterruptSink = Callable[[int, int], None]


class ServedDevice(Protocol):
    """What a vfio-user backend needs from a device."""

    device_flags: int          # VFIO_DEVICE_FLAGS_*
    num_regions: int           # >= VFIO_PCI_NUM_REGIONS
    num_irqs: int              # >= VFIO_PCI_NUM_IRQS

    def region_info(self, index: int) -> RegionInfo: ...
    def irq_info(self, index: int) -> IrqInfo: ...
    def region_read(self, index: int, offset: int, count: int) -> bytes: ...
    def region_write(self, index: int, offset: int, data: bytes) -> None: ...
    def reset(self) -> None: ...
    def set_interrupt_sink(self, sink: InterruptSink | None) -> None: ...
    def irq_state_changed(self, index: int, start: int, count: int, masked: bool) -> None: ...


@dataclass
class ClientLimits:
    """Capabilities negotiated in VERSION that the device side may want to know."""
    max_msg_fds: int = 1
    max_data_xfer_size: int = 1 << 20
    extra: dict = field(default_factory=dict)
