"""BAR0: the trapped register file (its map: hugepfn.abi.registers, docs/device.md).

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

from hugepfn.abi.cper import ERROR_RECORD_SIZE
from hugepfn.abi.registers import (
    REG_ID, REG_VERSION, REG_STATUS, REG_CONTROL, REG_DOORBELL, REG_DOORBELL_COUNT, REG_MEM_BAR,
    REG_MEM_SIZE_LO, REG_MEM_SIZE_HI, REG_MEM_DPA_LO, REG_MEM_DPA_HI, REG_POISON_RANGES, REG_SCRATCH,
    SCRATCH_COUNT, REG_ERRQ_CAPACITY, REG_ERRQ_COUNT, REG_ERRQ_HEAD, REG_ERRQ_TAIL, REG_ERRQ_RECORD_SIZE,
    REG_ERRQ_LOST, REG_ERRQ_WINDOW, ERRQ_WINDOW_SIZE, REGISTER_MAP_VERSION, STATUS_READY,
    STATUS_ERRQ_PENDING, STATUS_ERRQ_OVERFLOW, STATUS_POISON, STATUS_INTX, CONTROL_RW, CONTROL_DEFAULT
)

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
