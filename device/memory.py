"""Memory BARs backed by sparse memfds.

The memfd is as long as the device memory (``memory_size``), not the BAR window: an
8 GiB BAR costs only the pages written, a 1 TiB one costs nothing until touched.  The
BAR window can be larger (non-power-of-two device memory behind a power-of-two BAR, as a
Grace-Hopper GPU exposes it, or a Resizable BAR opened wider): bytes past the memory read as
all ones and writes there are dropped, as the host's variant driver does for its emulated BAR.
"""
from __future__ import annotations

import os

from hugepfn.device.interface import SparseArea
from hugepfn.device.profiles import BarSpec


class MemoryBar:
    def __init__(self, spec: BarSpec, device_name: str):
        self.spec = spec
        self.index = spec.index
        self.memory_size = spec.memory_size
        self.window = spec.size
        self.fd = os.memfd_create(f"hugepfn-{device_name}-bar{spec.index}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.memory_size)
        except OSError:
            os.close(self.fd)
            raise

    @property
    def sparse_areas(self) -> tuple[SparseArea, ...]:
        """The mmap-able part: the real memory inside the current window."""
        return (SparseArea(0, min(self.memory_size, self.window)),)

    def read(self, offset: int, count: int) -> bytes:
        backed = max(0, min(offset + count, self.memory_size) - offset)
        data = os.pread(self.fd, backed, offset) if backed else b""
        if len(data) < backed:       # cannot happen on a memfd, but never return short silently
            data += bytes(backed - len(data))
        return data + b"\xff" * (count - backed)

    def write(self, offset: int, data: bytes) -> None:
        backed = max(0, min(offset + len(data), self.memory_size) - offset)
        view = memoryview(data)[:backed]
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def resident_bytes(self) -> int:
        """Bytes of the memfd actually allocated (st_blocks is in 512-byte units)."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
