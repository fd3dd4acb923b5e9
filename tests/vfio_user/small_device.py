"""A small ServedDevice for engine unit tests: real memfd BAR, real 4 KiB config space.

Kept next to the real GpuDevice because the engine tests need a device whose every
reaction is known exactly (a doorbell that raises a chosen vector, a register that
fails with a chosen errno, a BAR with a trapped first page) without depending on
the GPU model's register map.
"""
from __future__ import annotations

import errno
import os

from hugepfn.abi.vfio import (
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
)
from hugepfn.device.interface import IrqInfo, RegionInfo, SparseArea

RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
REGS_SIZE = 0x1000
MEM_SIZE = 2 << 20
TRAPPED = 0x1000            # the first page of BAR2 is not in the sparse area
DOORBELL = 0x100            # write a vector number: raises that MSI-X vector
FAIL_REG = 0x200            # any access fails with EIO (a device-side error)
IRQ_COUNTS = {0: 1, 1: 0, 2: 4, 3: 1, 4: 1}   # INTx, MSI, MSI-X, ERR, REQ


class SmallDevice:
    device_flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
    num_regions = VFIO_PCI_NUM_REGIONS
    num_irqs = VFIO_PCI_NUM_IRQS

    def __init__(self):
        self.config = bytearray(4096)
        self.config[0:4] = (0x5678_1234).to_bytes(4, "little")     # vendor 0x1234, device 0x5678
        self.config[8:12] = (0x0302_0000).to_bytes(4, "little")    # 3D controller
        self.regs = bytearray(REGS_SIZE)
        self.mem_fd = os.memfd_create("small-bar2", os.MFD_CLOEXEC)
        os.ftruncate(self.mem_fd, MEM_SIZE)
        self.sink = None
        self.resets = 0
        self.irq_changes: list[tuple[int, int, int, bool]] = []

    def close(self):
        os.close(self.mem_fd)

    def region_info(self, index: int) -> RegionInfo:
        if index == 0:
            return RegionInfo(0, REGS_SIZE, RW)
        if index == 2:
            return RegionInfo(2, MEM_SIZE, RW | VFIO_REGION_INFO_FLAG_MMAP, fd=self.mem_fd, fd_offset=0,
                              sparse_areas=(SparseArea(TRAPPED, MEM_SIZE - TRAPPED),), is_64bit=True,
                              prefetchable=True)
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return RegionInfo(index, len(self.config), RW)
        return RegionInfo(index, 0, 0)

    def irq_info(self, index: int) -> IrqInfo:
        return IrqInfo(index, IRQ_COUNTS[index], VFIO_IRQ_INFO_EVENTFD)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == 0:
            if offset <= FAIL_REG < offset + count:
                raise OSError(errno.EIO, "register 0x200 always fails")
            return bytes(self.regs[offset:offset + count])
        if index == 2:
            return os.pread(self.mem_fd, count, offset)
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return bytes(self.config[offset:offset + count])
        raise OSError(errno.EINVAL, f"no region {index}")

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == 0:
            if offset <= FAIL_REG < offset + len(data):
                raise OSError(errno.EIO, "register 0x200 always fails")
            self.regs[offset:offset + len(data)] = data
            if offset == DOORBELL and self.sink is not None:
                self.sink(2, data[0])
        elif index == 2:
            os.pwrite(self.mem_fd, data, offset)
        elif index == VFIO_PCI_CONFIG_REGION_INDEX:
            if offset < 4:                      # ids are read-only
                data = data[4 - offset:] if offset + len(data) > 4 else b""
                offset = 4
            self.config[offset:offset + len(data)] = data
        else:
            raise OSError(errno.EINVAL, f"no region {index}")

    def reset(self) -> None:
        self.resets += 1
        self.regs[:] = bytes(REGS_SIZE)

    def set_interrupt_sink(self, sink) -> None:
        self.sink = sink

    def irq_state_changed(self, index: int, start: int, count: int, masked: bool) -> None:
        self.irq_changes.append((index, start, count, masked))
