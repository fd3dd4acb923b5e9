"""BAR0 register map: every register's reset value and access rule (docs/device.md)."""
from __future__ import annotations

import errno
import struct

import pytest

from hugepfn.abi import registers as r
from hugepfn.abi.cper import ERROR_RECORD_SIZE, parse_record
from hugepfn.abi.vfio import VFIO_PCI_INTX_IRQ_INDEX
from hugepfn.device.gpu import GpuDevice

from .conftest import Recorder


def rd(dev, off):
    return struct.unpack("<I", dev.region_read(0, off, 4))[0]


def wr(dev, off, value):
    dev.region_write(0, off, struct.pack("<I", value))


def test_identity_and_version(tiny):
    assert rd(tiny, r.REG_ID) == 0x2330 << 16 | 0x10DE
    assert rd(tiny, r.REG_VERSION) == r.REGISTER_MAP_VERSION
    wr(tiny, r.REG_ID, 0)
    assert rd(tiny, r.REG_ID) == 0x2330 << 16 | 0x10DE


def test_memory_description_registers():
    with GpuDevice.from_profile("nvgrace") as dev:
        assert rd(dev, r.REG_MEM_BAR) == 2
        size = rd(dev, r.REG_MEM_SIZE_HI) << 32 | rd(dev, r.REG_MEM_SIZE_LO)
        assert size == 96 * 2**30 + 6 * 2**20
        assert rd(dev, r.REG_MEM_DPA_HI) << 32 | rd(dev, r.REG_MEM_DPA_LO) == 0x4000_0000_0000
        assert struct.unpack("<Q", dev.region_read(0, r.REG_MEM_SIZE_LO, 8))[0] == size


def test_status_reset_value(tiny):
    assert rd(tiny, r.REG_STATUS) == r.STATUS_READY
    wr(tiny, r.REG_STATUS, 0xFFFFFFFF)
    assert rd(tiny, r.REG_STATUS) == r.STATUS_READY


def test_control_rw_bits(tiny):
    assert rd(tiny, r.REG_CONTROL) == r.CONTROL_ERR_IRQ
    wr(tiny, r.REG_CONTROL, 0xFFFFFFFF)
    assert rd(tiny, r.REG_CONTROL) == r.CONTROL_RW
    wr(tiny, r.REG_CONTROL, 0)
    assert rd(tiny, r.REG_CONTROL) == 0


def test_scratch_registers(tiny):
    for i in range(r.SCRATCH_COUNT):
        wr(tiny, r.REG_SCRATCH + 4 * i, 0x1000 + i)
    assert [rd(tiny, r.REG_SCRATCH + 4 * i) for i in range(r.SCRATCH_COUNT)] == [0x1000 + i for i in range(16)]
    tiny.region_write(0, r.REG_SCRATCH, struct.pack("<II", 0xAAAA5555, 0x12345678))   # 8-byte write
    assert tiny.region_read(0, r.REG_SCRATCH + 2, 4) == struct.pack("<I", 0x5678AAAA)  # unaligned read
    tiny.reset()
    assert rd(tiny, r.REG_SCRATCH) == 0


def test_doorbell_raises_intx_when_msix_disabled(tiny, sink):
    wr(tiny, r.REG_DOORBELL, 3)
    assert sink.calls == [(VFIO_PCI_INTX_IRQ_INDEX, 0)]
    assert rd(tiny, r.REG_DOORBELL) == 0
    assert rd(tiny, r.REG_DOORBELL_COUNT) == 1
    assert rd(tiny, r.REG_STATUS) & r.STATUS_INTX


def test_unimplemented_offsets_read_zero_and_ignore_writes(tiny):
    wr(tiny, 0x800, 0xFFFFFFFF)
    assert rd(tiny, 0x800) == 0
    assert tiny.region_read(0, 0xFFFC, 4) == bytes(4)


@pytest.mark.parametrize("off, data", [(0x42, b"\0" * 4), (0x40, b"\0" * 2), (0x40, b"\0" * 5)])
def test_register_writes_must_be_aligned_dwords(tiny, off, data):
    with pytest.raises(OSError) as exc:
        tiny.region_write(0, off, data)
    assert exc.value.errno == errno.EINVAL


def test_access_past_the_bar_is_einval(tiny):
    with pytest.raises(OSError) as exc:
        tiny.region_read(0, 0xFFFE, 4)
    assert exc.value.errno == errno.EINVAL


class TestErrorQueue:
    def test_empty_queue(self, tiny):
        assert rd(tiny, r.REG_ERRQ_CAPACITY) == 16
        assert rd(tiny, r.REG_ERRQ_COUNT) == 0
        assert rd(tiny, r.REG_ERRQ_HEAD) == rd(tiny, r.REG_ERRQ_TAIL) == 0
        assert rd(tiny, r.REG_ERRQ_RECORD_SIZE) == ERROR_RECORD_SIZE
        assert tiny.region_read(0, r.REG_ERRQ_WINDOW, r.ERRQ_WINDOW_SIZE) == bytes(r.ERRQ_WINDOW_SIZE)

    def test_records_are_read_through_the_window_and_retired_via_head(self, tiny):
        tiny.poison.inject(bar=2, offset=0x1000)
        tiny.poison.inject(bar=2, offset=0x20000, granularity=4096)
        assert rd(tiny, r.REG_ERRQ_COUNT) == 2 and rd(tiny, r.REG_ERRQ_TAIL) == 2
        status = rd(tiny, r.REG_STATUS)
        assert status & r.STATUS_ERRQ_PENDING and status & r.STATUS_POISON
        first = parse_record(tiny.region_read(0, r.REG_ERRQ_WINDOW, ERROR_RECORD_SIZE))
        assert (first.sequence, first.bar_offset, first.length) == (1, 0x1000, 64)
        wr(tiny, r.REG_ERRQ_HEAD, 1)
        second = parse_record(tiny.region_read(0, r.REG_ERRQ_WINDOW, ERROR_RECORD_SIZE))
        assert (second.sequence, second.bar_offset, second.length) == (2, 0x20000, 4096)
        wr(tiny, r.REG_ERRQ_HEAD, 5)                  # beyond TAIL: ignored
        assert rd(tiny, r.REG_ERRQ_HEAD) == 1
        wr(tiny, r.REG_ERRQ_HEAD, 2)
        assert rd(tiny, r.REG_ERRQ_COUNT) == 0
        assert not rd(tiny, r.REG_STATUS) & r.STATUS_ERRQ_PENDING
        assert rd(tiny, r.REG_STATUS) & r.STATUS_POISON       # the poison itself is still there

    def test_overflow_drops_newest_and_is_w1c(self, tiny):
        for i in range(18):
            tiny.poison.inject(bar=2, offset=i * 64)
        assert rd(tiny, r.REG_ERRQ_COUNT) == 16
        assert rd(tiny, r.REG_ERRQ_LOST) == 2
        assert rd(tiny, r.REG_STATUS) & r.STATUS_ERRQ_OVERFLOW
        assert [e.sequence for e in tiny.queued_errors()] == list(range(1, 17))
        wr(tiny, r.REG_STATUS, r.STATUS_ERRQ_OVERFLOW)
        assert rd(tiny, r.REG_ERRQ_LOST) == 0
        assert not rd(tiny, r.REG_STATUS) & r.STATUS_ERRQ_OVERFLOW

    def test_queue_is_sticky_across_reset(self, tiny):
        tiny.poison.inject(bar=2, offset=0)
        tiny.reset()
        assert rd(tiny, r.REG_ERRQ_COUNT) == 1

    def test_head_wraps_at_32_bits(self, tiny):
        q = tiny.registers.queue
        q.head = 0xFFFFFFFF
        tiny.poison.inject(bar=2, offset=0)
        tiny.poison.inject(bar=2, offset=64)
        assert rd(tiny, r.REG_ERRQ_TAIL) == 1
        assert rd(tiny, r.REG_ERRQ_COUNT) == 2
        wr(tiny, r.REG_ERRQ_HEAD, 1)
        assert rd(tiny, r.REG_ERRQ_COUNT) == 0

    def test_control_err_irq_off_queues_without_interrupt(self, tiny):
        rec = Recorder()
        tiny.set_interrupt_sink(rec)
        wr(tiny, r.REG_CONTROL, 0)
        tiny.poison.inject(bar=2, offset=0)
        assert rec.calls == []
        assert rd(tiny, r.REG_ERRQ_COUNT) == 1
