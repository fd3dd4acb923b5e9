"""BAR0: the trapped register file (map in docs/device.md).

Registers are 32 bits wide.  Reads may be any size and alignment (composed from the
dwords); writes must be whole, aligned dwords, anything else fails with EINVAL.
Unimplemented offsets inside the BAR read as zero and ignore writes.
"""
from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable

from hugepfn.device.cper import ERROR_RECORD_SIZE

# Register offsets.
REG_ID = 0x0000                 # RO  vendor_id | device_id << 16
REG_VERSION = 0x0004            # RO  register-map version
REG_STATUS = 0x0008             # RO/W1C
REG_CONTROL = 0x000C            # RW
REG_DOORBELL = 0x0010           # WO  write N: raise interrupt vector N; reads 0
REG_DOORBELL_COUNT = 0x0014     # RO  doorbells rung since reset
REG_MEM_BAR = 0x0020            # RO  index of the first memory BAR (0xFFFFFFFF: none)
REG_MEM_SIZE_LO = 0x0028        # RO  its device memory size, 64-bit
REG_MEM_SIZE_HI = 0x002C
REG_MEM_DPA_LO = 0x0030         # RO  its device physical base address, 64-bit
REG_MEM_DPA_HI = 0x0034
REG_POISON_RANGES = 0x0038      # RO  merged poisoned ranges on the device
REG_SCRATCH = 0x0040            # RW  16 scratch registers, 0x40..0x7C
SCRATCH_COUNT = 16
REG_ERRQ_CAPACITY = 0x1000      # RO  records the queue holds
REG_ERRQ_COUNT = 0x1004         # RO  records queued (TAIL - HEAD)
REG_ERRQ_HEAD = 0x1008          # RW  consumer index; write HEAD+n to retire n records
REG_ERRQ_TAIL = 0x100C          # RO  producer index
REG_ERRQ_RECORD_SIZE = 0x1010   # RO  bytes per record
REG_ERRQ_LOST = 0x1014          # RO  records dropped because the queue was full
REG_ERRQ_WINDOW = 0x1100        # RO  the record at HEAD (zeros when empty)
ERRQ_WINDOW_SIZE = 0x100

REGISTER_MAP_VERSION = 0x00010000

STATUS_READY = 1 << 0           # RO  always 1 once the device is up
STATUS_ERRQ_PENDING = 1 << 1    # RO  the error queue is not empty
STATUS_ERRQ_OVERFLOW = 1 << 2   # W1C a record was dropped; writing 1 also zeroes ERRQ_LOST
STATUS_POISON = 1 << 3          # RO  some device memory is poisoned
STATUS_INTX = 1 << 4            # W1C INTx is asserted; writing 1 deasserts it
STATUS_W1C = STATUS_ERRQ_OVERFLOW | STATUS_INTX

CONTROL_ERR_IRQ = 1 << 0        # RW  raise the error interrupt when a record is queued (default 1)
CONTROL_RW = CONTROL_ERR_IRQ
CONTROL_DEFAULT = CONTROL_ERR_IRQ

_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")


class ErrorQueue:
    """A bounded ring of error records with free-running 32-bit HEAD/TAIL indexes.

    When full, the newest record is dropped and counted in LOST (the poison set still
    holds the truth; the queue is a notification channel).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.records: deque[bytes] = deque()
        self.head = 0
        self.lost = 0

    @property
    def tail(self) -> int:
        return (self.head + len(self.records)) & 0xFFFFFFFF

    def push(self, record: bytes) -> bool:
        if len(self.records) >= self.capacity:
            self.lost += 1
            return False
        self.records.append(record)
        return True

    def retire_to(self, new_head: int) -> None:
        """Consumer wrote HEAD: retire records up to it; a value outside [head, tail] is ignored."""
        n = (new_head - self.head) & 0xFFFFFFFF
        if n > len(self.records):
            return
        for _ in range(n):
            self.records.popleft()
        self.head = new_head & 0xFFFFFFFF

    def window(self) -> bytes:
        record = self.records[0] if self.records else b""
        return record.ljust(ERRQ_WINDOW_SIZE, b"\0")


@dataclass
class RegisterHooks:
    """What the register file needs from the rest of the device."""
    doorbell: Callable[[int], None]
    intx_ack: Callable[[], None]
    poison_ranges: Callable[[], int]
    intx_asserted: Callable[[], bool]


class RegisterFile:
    def __init__(self, ident: int, mem_bar: int | None, mem_size: int, mem_dpa: int,
                 queue_capacity: int, hooks: RegisterHooks, status_registers: tuple[tuple[int, int], ...] = ()):
        self.ident = ident
        self.mem_bar = 0xFFFFFFFF if mem_bar is None else mem_bar
        self.mem_size = mem_size
        self.mem_dpa = mem_dpa
        self.hooks = hooks
        self.queue = ErrorQueue(queue_capacity)
        q = self.queue
        self._getters = {
            REG_ID: lambda: self.ident,
            REG_VERSION: lambda: REGISTER_MAP_VERSION,
            REG_STATUS: self.status,
            REG_CONTROL: lambda: self.control,
            REG_DOORBELL_COUNT: lambda: self.doorbell_count,
            REG_MEM_BAR: lambda: self.mem_bar,
            REG_MEM_SIZE_LO: lambda: self.mem_size & 0xFFFFFFFF,
            REG_MEM_SIZE_HI: lambda: self.mem_size >> 32,
            REG_MEM_DPA_LO: lambda: self.mem_dpa & 0xFFFFFFFF,
            REG_MEM_DPA_HI: lambda: self.mem_dpa >> 32,
            REG_POISON_RANGES: lambda: min(self.hooks.poison_ranges(), 0xFFFFFFFF),
            REG_ERRQ_CAPACITY: lambda: q.capacity,
            REG_ERRQ_COUNT: lambda: len(q.records),
            REG_ERRQ_HEAD: lambda: q.head,
            REG_ERRQ_TAIL: lambda: q.tail,
            REG_ERRQ_RECORD_SIZE: lambda: ERROR_RECORD_SIZE,
            REG_ERRQ_LOST: lambda: q.lost,
        }
        for offset, value in status_registers:      # the profile's fixed status dwords
            self._getters[offset] = (lambda v: lambda: v)(value)
        self.reset()

    def reset(self) -> None:
        """Scratch, CONTROL and the doorbell count reset; the error queue is sticky (as AER
        status is), so records raised before a reset are not lost."""
        self.control = CONTROL_DEFAULT
        self.doorbell_count = 0
        self.scratch = [0] * SCRATCH_COUNT

    # -- dword access ------------------------------------------------------------------------
    def status(self) -> int:
        value = STATUS_READY
        if self.queue.records:
            value |= STATUS_ERRQ_PENDING
        if self.queue.lost:
            value |= STATUS_ERRQ_OVERFLOW
        if self.hooks.poison_ranges():
            value |= STATUS_POISON
        if self.hooks.intx_asserted():
            value |= STATUS_INTX
        return value

    def read32(self, offset: int) -> int:
        if REG_SCRATCH <= offset < REG_SCRATCH + 4 * SCRATCH_COUNT:
            return self.scratch[(offset - REG_SCRATCH) >> 2]
        if REG_ERRQ_WINDOW <= offset < REG_ERRQ_WINDOW + ERRQ_WINDOW_SIZE:
            return _U32.unpack_from(self.queue.window(), offset - REG_ERRQ_WINDOW)[0]
        getter = self._getters.get(offset)
        return getter() if getter else 0

    def write32(self, offset: int, value: int) -> None:
        if REG_SCRATCH <= offset < REG_SCRATCH + 4 * SCRATCH_COUNT:
            self.scratch[(offset - REG_SCRATCH) >> 2] = value
        elif offset == REG_CONTROL:
            self.control = value & CONTROL_RW
        elif offset == REG_STATUS:
            if value & STATUS_ERRQ_OVERFLOW:
                self.queue.lost = 0
            if value & STATUS_INTX:
                self.hooks.intx_ack()
        elif offset == REG_DOORBELL:
            self.doorbell_count = (self.doorbell_count + 1) & 0xFFFFFFFF
            self.hooks.doorbell(value)
        elif offset == REG_ERRQ_HEAD:
            self.queue.retire_to(value)
        # everything else is read-only or unimplemented: the write is dropped

    # -- region access -----------------------------------------------------------------------
    def read(self, offset: int, count: int) -> bytes:
        if not offset & 3:                  # aligned dword and qword: the common accesses
            if count == 4:
                return _U32.pack(self.read32(offset))
            if count == 8:
                return _U32x2.pack(self.read32(offset), self.read32(offset + 4))
        first = offset & ~3
        last = (offset + count + 3) & ~3
        raw = b"".join(_U32.pack(self.read32(o)) for o in range(first, last, 4))
        return raw[offset - first:offset - first + count]

    def write(self, offset: int, data: bytes) -> None:
        if offset % 4 or len(data) % 4:
            raise OSError(errno.EINVAL, f"BAR0 write of {len(data)} bytes at {offset:#x}: registers "
                                        "take aligned 32-bit writes")
        if len(data) == 4:                  # the common access
            self.write32(offset, _U32.unpack(data)[0])
            return
        for i in range(0, len(data), 4):
            self.write32(offset + i, _U32.unpack_from(data, i)[0])
