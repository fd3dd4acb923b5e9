"""DEVICE_GET_IRQ_INFO."""
from __future__ import annotations

import errno

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_IRQ_INFO_EVENTFD

from .helpers import Command, error_of, still_answers


@pytest.mark.parametrize("index", range(5))
def test_counts_and_flags(raw, facts, index):
    reply = raw.request(Command.DEVICE_GET_IRQ_INFO, wire.IrqInfo.build(
        {"argsz": 16, "flags": 0, "index": index, "count": 0}))
    info = wire.IrqInfo.parse(reply.payload)
    assert (info.argsz, info.index, info.count) == (16, index, facts.irq_counts[index])
    assert info.flags & VFIO_IRQ_INFO_EVENTFD


def test_gpu_tiny_has_intx_eight_msix_err_and_req(facts):
    assert facts.irq_counts == {0: 1, 1: 0, 2: 8, 3: 1, 4: 1}


@pytest.mark.parametrize("index,argsz", [(5, 16), (0xFFFF_FFFF, 16), (0, 4)])
def test_bad_index_or_argsz_is_einval(raw, index, argsz):
    assert error_of(raw, Command.DEVICE_GET_IRQ_INFO, wire.IrqInfo.build(
        {"argsz": argsz, "flags": 0, "index": index, "count": 0})) == errno.EINVAL
    still_answers(raw)
