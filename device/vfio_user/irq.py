"""IRQ state of one vfio-user connection: the eventfds SET_IRQS handed over.

The table owns the eventfds (it closes them on de-assign and on disconnect) and
provides the device's ``InterruptSink``: raising a vector writes 1 to its eventfd,
as libvfio-user's ``vfu_irq_trigger`` does.  A masked vector, or one without an
eventfd, records a pending bit instead; unmasking a pending vector fires it.

The sink may be called from any thread (the device raises interrupts when it
likes), so the table is guarded by a lock.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass, field

from hugepfn.abi.vfio import VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX
from hugepfn.abi.vfio_user import (
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_TYPE_MASK, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IRQ_SET_DATA_TYPE_MASK,
)

from .errors import CommandError, einval

_ONE = (1).to_bytes(8, "little")
ERR_REQ_INDEXES = (VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX)


@dataclass
class Vector:
    eventfd: int | None = None
    masked: bool = False
    pending: bool = False
    fired: int = 0          # eventfd writes done (observability for tests and status)


@dataclass
class IrqIndex:
    count: int
    vectors: list[Vector] = field(default_factory=list)

    def __post_init__(self):
        self.vectors = [Vector() for _ in range(self.count)]


def is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


class IrqTable:
    def __init__(self, counts: dict[int, int]):
        self._lock = threading.Lock()
        self.indexes = {index: IrqIndex(count) for index, count in counts.items()}

    # -- SET_IRQS -----------------------------------------------------------
    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes,
                 fds: list[int]) -> tuple[int, int, int, bool] | None:
        """Apply one SET_IRQS.  Takes ownership of ``fds`` (closes them on error).

        Returns (index, start, count, masked) when the mask state changed, so the
        caller can tell the device.
        """
        try:
            return self._set_irqs(flags, index, start, count, data, fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _set_irqs(self, flags, index, start, count, data, fds):
        data_type = flags & IRQ_SET_DATA_TYPE_MASK
        action = flags & IRQ_SET_ACTION_TYPE_MASK
        if flags & ~(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK):
            raise einval(f"SET_IRQS: unknown flags {flags:#x}")
        if data_type not in (IRQ_SET_DATA_NONE, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD):
            raise einval(f"SET_IRQS: need exactly one data type, flags {flags:#x}")
        if action not in (IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_UNMASK, IRQ_SET_ACTION_TRIGGER):
            raise einval(f"SET_IRQS: need exactly one action, flags {flags:#x}")
        irq = self.indexes.get(index)
        if irq is None:
            raise einval(f"SET_IRQS: bad index {index}")
        # "a count (and start) of 0, with data flags of VFIO_IRQ_SET_DATA_NONE disables
        # all interrupts of the index" (with ACTION_TRIGGER, as libvfio-user requires).
        disable_all = count == 0 and data_type == IRQ_SET_DATA_NONE and action == IRQ_SET_ACTION_TRIGGER
        if count == 0 and (not disable_all or start != 0):
            raise einval("SET_IRQS: count 0 is only valid with start 0 and DATA_NONE|ACTION_TRIGGER")
        if index in ERR_REQ_INDEXES and action != IRQ_SET_ACTION_TRIGGER:
            # As libvfio-user: the error and request notifiers only trigger.
            raise einval(f"SET_IRQS: index {index} takes ACTION_TRIGGER only")
        if start + count > irq.count:
            raise einval(f"SET_IRQS: vectors {start}+{count} beyond {irq.count} of index {index}")
        if data_type == IRQ_SET_DATA_BOOL and len(data) != count:
            raise einval(f"SET_IRQS: DATA_BOOL needs {count} bytes, got {len(data)}")
        if data_type != IRQ_SET_DATA_BOOL and data:
            raise einval("SET_IRQS: unexpected data bytes")
        if data_type == IRQ_SET_DATA_EVENTFD:
            if action != IRQ_SET_ACTION_TRIGGER:
                raise einval("SET_IRQS: eventfds only with ACTION_TRIGGER")
            if fds and len(fds) != count:
                raise einval(f"SET_IRQS: {count} vectors but {len(fds)} fds")
            for fd in fds:
                if not is_eventfd(fd):
                    raise einval("SET_IRQS: fd is not an eventfd")
        elif fds:
            raise einval("SET_IRQS: fds without DATA_EVENTFD")

        with self._lock:
            if disable_all:
                for vector in irq.vectors:
                    self._deassign(vector)
                return None
            selected = range(start, start + count)
            if data_type == IRQ_SET_DATA_BOOL:
                selected = [v for v, flag in zip(selected, data) if flag]
            if data_type == IRQ_SET_DATA_EVENTFD:
                for n, v in enumerate(selected):
                    vector = irq.vectors[v]
                    self._deassign(vector)
                    if fds:
                        fd = fds[n]
                        # A non-blocking write: a hostile peer that fills the counter
                        # must not block the server (the write just becomes pending).
                        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
                        vector.eventfd = fd
                fds.clear()
                return None
            if action == IRQ_SET_ACTION_TRIGGER:
                for v in selected:
                    self._fire(irq.vectors[v])
                return None
            masked = action == IRQ_SET_ACTION_MASK
            for v in selected:
                vector = irq.vectors[v]
                vector.masked = masked
                if not masked and vector.pending:
                    self._fire(vector)
            return (index, start, count, masked)

    # -- the device's InterruptSink -----------------------------------------
    def raise_irq(self, index: int, vector: int) -> None:
        with self._lock:
            irq = self.indexes.get(index)
            if irq is None or not 0 <= vector < irq.count:
                raise CommandError(errno.EINVAL, f"no IRQ vector {index}/{vector}")
            self._fire(irq.vectors[vector])

    def _fire(self, vector: Vector) -> None:
        if vector.masked or vector.eventfd is None:
            vector.pending = True
            return
        try:
            os.write(vector.eventfd, _ONE)
        except BlockingIOError:
            vector.pending = True
            return
        vector.pending = False
        vector.fired += 1

    @staticmethod
    def _deassign(vector: Vector) -> None:
        if vector.eventfd is not None:
            os.close(vector.eventfd)
            vector.eventfd = None

    def vector(self, index: int, vector: int) -> Vector:
        return self.indexes[index].vectors[vector]

    def close(self) -> None:
        """Close every eventfd (disconnect)."""
        with self._lock:
            for irq in self.indexes.values():
                for vector in irq.vectors:
                    self._deassign(vector)
                    vector.masked = False
                    vector.pending = False
