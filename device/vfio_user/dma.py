"""The DMA table of one vfio-user connection.

DMA_MAP hands the server a window of client (guest) memory at an IOVA, with an
fd the server may mmap, or without one (guest RAM that is not shareable, other
devices' BARs, even this device's own BAR).  Fd-less windows are recorded so
that DMA to them can go through DMA_READ/WRITE messages; they are never an error.

Device-side accesses return copies, never views into a mapping, so that
DMA_UNMAP can always close the mapping: no reference outlives the window.
"""
from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
import threading
from dataclasses import dataclass

from hugepfn.abi.vfio_user import DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE

from .errors import CommandError, einval

PAGE_SIZE = mmap.PAGESIZE
IOVA_LIMIT = 1 << 64


@dataclass
class DmaRegion:
    address: int
    size: int
    flags: int
    offset: int = 0
    mapping: mmap.mmap | None = None   # None: message-based (no fd)

    @property
    def end(self) -> int:
        return self.address + self.size


class DmaTable:
    """Non-overlapping DMA windows keyed by IOVA."""

    def __init__(self, max_maps: int = 65535):
        self.max_maps = max_maps
        # map/unmap run in the server thread, device DMA in any thread: one lock so an
        # access never touches a mapping that UNMAP is closing.
        self._lock = threading.RLock()
        self._starts: list[int] = []
        self._regions: list[DmaRegion] = []

    def __len__(self) -> int:
        return len(self._regions)

    def regions(self) -> list[DmaRegion]:
        return list(self._regions)

    def map(self, address: int, size: int, flags: int, offset: int, fd: int | None) -> DmaRegion:
        """Add a window; with ``fd`` the server mmaps it.  Takes ownership of ``fd``
        only for the duration of the call (the mapping keeps the memory alive)."""
        with self._lock:
            return self._map(address, size, flags, offset, fd)

    def _map(self, address, size, flags, offset, fd) -> DmaRegion:
        if flags & ~(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE):
            raise einval(f"DMA_MAP: unknown flags {flags:#x}")
        if size == 0 or address + size > IOVA_LIMIT:
            raise einval(f"DMA_MAP: bad range {address:#x}+{size:#x}")
        if len(self._regions) >= self.max_maps:
            raise CommandError(errno.ENOSPC, f"DMA_MAP: more than {self.max_maps} windows")
        i = bisect.bisect_right(self._starts, address)
        if i > 0 and self._regions[i - 1].end > address:
            raise CommandError(errno.EEXIST, f"DMA_MAP: {address:#x}+{size:#x} overlaps a window")
        if i < len(self._regions) and self._regions[i].address < address + size:
            raise CommandError(errno.EEXIST, f"DMA_MAP: {address:#x}+{size:#x} overlaps a window")
        mapping = None
        if fd is not None:
            mapping = self._mmap_client_fd(fd, offset, size, flags)
        region = DmaRegion(address, size, flags, offset, mapping)
        self._starts.insert(i, address)
        self._regions.insert(i, region)
        return region

    @staticmethod
    def _mmap_client_fd(fd: int, offset: int, size: int, flags: int) -> mmap.mmap:
        if offset % PAGE_SIZE:
            raise einval(f"DMA_MAP: fd offset {offset:#x} is not page aligned")
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise CommandError(errno.EBADF, f"DMA_MAP: fd: {exc.strerror}") from None
        # Only regular files (memfd, hugetlbfs, tmpfs): they have a size we can check,
        # so the server never maps past the end of the file (a SIGBUS on access).
        if not stat.S_ISREG(st.st_mode):
            raise einval("DMA_MAP: fd is not a regular file or memfd")
        if offset + size > st.st_size:
            raise einval(f"DMA_MAP: {offset:#x}+{size:#x} runs past the end of the fd ({st.st_size:#x})")
        prot = 0
        if flags & DMA_MAP_FLAG_READ:
            prot |= mmap.PROT_READ
        if flags & DMA_MAP_FLAG_WRITE:
            prot |= mmap.PROT_WRITE
        try:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot or mmap.PROT_READ, offset=offset)
        except (OSError, ValueError, OverflowError) as exc:
            raise CommandError(getattr(exc, "errno", None) or errno.EINVAL, f"DMA_MAP: mmap: {exc}") from None

    def unmap(self, address: int, size: int) -> DmaRegion:
        """Remove the window that matches [address, address+size) exactly."""
        with self._lock:
            return self._unmap(address, size)

    def _unmap(self, address: int, size: int) -> DmaRegion:
        i = bisect.bisect_left(self._starts, address)
        if i == len(self._regions) or self._regions[i].address != address or self._regions[i].size != size:
            raise CommandError(errno.ENOENT, f"DMA_UNMAP: no window {address:#x}+{size:#x}")
        region = self._regions.pop(i)
        del self._starts[i]
        self._release(region)
        return region

    def unmap_all(self) -> int:
        with self._lock:
            return self._unmap_all()

    def _unmap_all(self) -> int:
        count = len(self._regions)
        for region in self._regions:
            self._release(region)
        self._regions.clear()
        self._starts.clear()
        return count

    @staticmethod
    def _release(region: DmaRegion) -> None:
        if region.mapping is not None:
            region.mapping.close()
            region.mapping = None

    def lookup(self, address: int, count: int) -> tuple[DmaRegion, int]:
        """The window holding all of [address, address+count) and the offset in it."""
        with self._lock:
            return self._lookup(address, count)

    def _lookup(self, address: int, count: int) -> tuple[DmaRegion, int]:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or count < 0 or address + count > self._regions[i].end:
            raise CommandError(errno.EFAULT, f"DMA: {address:#x}+{count:#x} is not inside one window")
        region = self._regions[i]
        return region, address - region.address

    def read(self, address: int, count: int) -> bytes:
        """Device reads guest memory through an mmap'ed window (a copy)."""
        with self._lock:
            region, off = self.lookup(address, count)
            if region.mapping is None:
                raise CommandError(errno.EREMOTE, "DMA window has no fd: use a DMA_READ message")
            if not region.flags & DMA_MAP_FLAG_READ:
                raise CommandError(errno.EACCES, "DMA window is not readable")
            return region.mapping[off:off + count]

    def write(self, address: int, data: bytes) -> None:
        with self._lock:
            region, off = self.lookup(address, len(data))
            if region.mapping is None:
                raise CommandError(errno.EREMOTE, "DMA window has no fd: use a DMA_WRITE message")
            if not region.flags & DMA_MAP_FLAG_WRITE:
                raise CommandError(errno.EACCES, "DMA window is not writable")
            region.mapping[off:off + len(data)] = data
