"""DEVICE_GET_IRQ_INFO."""
from __future__ import annotations

import errno

import pytest

from hugepfn.device.interface import VFIO_IRQ_INFO_EVENTFD
from hugepfn.device.vfio_user import wire

from .helpers import Command, error_of, still_answers
from .small_device import IRQ_COUNTS


@pytest.mark.parametrize("index", sorted(IRQ_COUNTS))
def test_counts_and_flags(raw, index):
    reply = raw.request(Command.DEVICE_GET_IRQ_INFO, wire.IrqInfo.build(
        {"argsz": 16, "flags": 0, "index": index, "count": 0}))
    info = wire.IrqInfo.parse(reply.payload)
    assert (info.argsz, info.index, info.count) == (16, index, IRQ_COUNTS[index])
    assert info.flags & VFIO_IRQ_INFO_EVENTFD


@pytest.mark.parametrize("index,argsz", [(5, 16), (0xFFFF_FFFF, 16), (0, 4)])
def test_bad_index_or_argsz_is_einval(raw, index, argsz):
    assert error_of(raw, Command.DEVICE_GET_IRQ_INFO, wire.IrqInfo.build(
        {"argsz": argsz, "flags": 0, "index": index, "count": 0})) == errno.EINVAL
    still_answers(raw)
