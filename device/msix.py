"""MSI-X table and Pending Bit Array (PCI Local Bus spec, MSI-X chapter).

The table (16 bytes per vector: message address low/high, data, vector control) and the
PBA live in the profile's MSI-X BAR.  A vector is masked when the function mask of the
capability is set, when the vfio-user client masked it with SET_IRQS (irq_state_changed),
or when its vector-control bit 0 is set *and a client drives the table*.  Raising a masked
vector sets its pending bit; unmasking delivers it and clears the bit, as the spec requires.

Why the table mask counts only once the table is written: under vfio the guest-visible
table belongs to the VMM (QEMU's vfio-user-pci emulates it and never forwards table
accesses, only PBA reads); the device's own table is programmed by whoever plays the host
kernel, which unmasks a vector when it hands the vector an eventfd.  A vfio-user server
cannot always see that hand-over (libvfio-user reports only SET_IRQS MASK/UNMASK), so until
a client writes the table through the BAR, the SET_IRQS state alone decides — as
libvfio-user's vfu_irq_trigger does.  A client that programs the table (a guest driver
through REGION_WRITE, our own host client) gets the spec's per-vector masking.
"""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Callable

ENTRY_SIZE = 16
VECTOR_CONTROL = 12            # offset of vector control inside an entry
VECTOR_MASKED = 1 << 0
PAGE = 4096


@dataclass(frozen=True)
class MsixLayout:
    vectors: int
    table_offset: int
    pba_offset: int
    pba_bytes: int
    bar_size: int              # smallest power-of-two BAR that holds both


def msix_bar_layout(vectors: int) -> MsixLayout:
    """Table at offset 0, PBA on the next 4 KiB page (kept apart so they can be mapped apart)."""
    table_bytes = vectors * ENTRY_SIZE
    pba_offset = -(-table_bytes // PAGE) * PAGE
    pba_bytes = -(-vectors // 64) * 8
    end = pba_offset + -(-pba_bytes // PAGE) * PAGE
    size = PAGE
    while size < end:
        size <<= 1
    return MsixLayout(vectors, 0, pba_offset, pba_bytes, size)


class MsixState:
    """Table + PBA + mask bookkeeping.  ``deliver(vector)`` is called for every delivered vector."""

    def __init__(self, vectors: int, deliver: Callable[[int], None]):
        self.layout = msix_bar_layout(vectors)
        self._deliver = deliver
        self.enabled = False
        self.function_masked = False
        self.client_masked: set[int] = set()
        self.reset()

    def reset(self) -> None:
        n = self.layout.vectors
        self.table = bytearray(n * ENTRY_SIZE)
        for v in range(n):      # every vector comes out of reset masked
            self.table[v * ENTRY_SIZE + VECTOR_CONTROL] = VECTOR_MASKED
        self.pending = 0
        self.table_driven = False      # has a client written the table since reset?
        # client_masked is the vfio-user client's SET_IRQS state, not the function's: kept.
        self.enabled = False
        self.function_masked = False

    # -- state -------------------------------------------------------------------------------
    def vector_masked(self, vector: int) -> bool:
        return bool(self.table[vector * ENTRY_SIZE + VECTOR_CONTROL] & VECTOR_MASKED)

    def is_masked(self, vector: int) -> bool:
        return (self.function_masked or vector in self.client_masked
                or (self.table_driven and self.vector_masked(vector)))

    def is_pending(self, vector: int) -> bool:
        return bool(self.pending >> vector & 1)

    def entry(self, vector: int) -> tuple[int, int, int]:
        """(message address, message data, vector control) of one table entry."""
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self.table, vector * ENTRY_SIZE)
        return hi << 32 | lo, data, ctrl

    # -- interrupts --------------------------------------------------------------------------
    def raise_vector(self, vector: int) -> bool:
        """Deliver ``vector`` now (True) or latch its pending bit (False)."""
        self._check_vector(vector)
        if self.is_masked(vector):
            self.pending |= 1 << vector
            return False
        self._deliver(vector)
        return True

    def deliver_unmasked_pending(self) -> None:
        """Called after any change that may unmask: pending vectors that are now open fire."""
        if not self.enabled or not self.pending:
            return
        for vector in range(self.layout.vectors):
            if self.pending >> vector & 1 and not self.is_masked(vector):
                self.pending &= ~(1 << vector)
                self._deliver(vector)

    def set_client_mask(self, start: int, count: int, masked: bool) -> None:
        for vector in range(start, start + count):
            self._check_vector(vector)
            if masked:
                self.client_masked.add(vector)
            else:
                self.client_masked.discard(vector)
        if not masked:
            self.deliver_unmasked_pending()

    def _check_vector(self, vector: int) -> None:
        if not 0 <= vector < self.layout.vectors:
            raise OSError(errno.EINVAL, f"MSI-X vector {vector} out of range 0..{self.layout.vectors - 1}")

    # -- BAR access --------------------------------------------------------------------------
    def read(self, offset: int, count: int) -> bytes:
        lay = self.layout
        out = bytearray(count)
        pba = self.pending.to_bytes(lay.pba_bytes, "little")
        for src, start in ((self.table, lay.table_offset), (pba, lay.pba_offset)):
            lo, hi = max(offset, start), min(offset + count, start + len(src))
            if lo < hi:
                out[lo - offset:hi - offset] = src[lo - start:hi - start]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Table writes must be dword aligned (spec: software uses dword or qword accesses).
        PBA and holes are read-only; writes there are dropped, as hardware does."""
        lay = self.layout
        table_end = lay.table_offset + len(self.table)
        end = offset + len(data)
        if offset < table_end and end > lay.table_offset:
            if offset % 4 or len(data) % 4:
                raise OSError(errno.EINVAL, f"MSI-X table write at {offset:#x} of {len(data)} bytes "
                                            "is not dword aligned")
            lo, hi = max(offset, lay.table_offset), min(end, table_end)
            self.table[lo - lay.table_offset:hi - lay.table_offset] = data[lo - offset:hi - offset]
            self.table_driven = True
            self.deliver_unmasked_pending()
