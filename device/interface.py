"""The contract between the device model and whatever serves it.

A served device (the emulated GPU in ``hugepfn.device``) is driven by a backend:
the project's own vfio-user engine (``backend python``) or libvfio-user through
cffi (``backend libvfio-user``).  Both backends see the device only through the
``ServedDevice`` protocol below, so the device never knows which one it has.

Failures are raised as ``OSError(errno, message)``; the backend turns the errno
into the wire reply in exactly one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

# VFIO PCI region indexes (include/uapi/linux/vfio.h).
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# VFIO PCI IRQ indexes.
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

# struct vfio_device_info flags.
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

# struct vfio_region_info flags.
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

# struct vfio_irq_info flags.
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3


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
