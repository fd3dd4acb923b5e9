from __future__ import annotations

import struct

import pytest

from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX as CFG
from hugepfn.device.gpu import GpuDevice


class Recorder:
    """An interrupt sink that remembers every (index, vector) it was given."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, index: int, vector: int) -> None:
        self.calls.append((index, vector))


@pytest.fixture
def tiny():
    with GpuDevice.from_profile("tiny") as dev:
        yield dev


@pytest.fixture
def sink(tiny):
    rec = Recorder()
    tiny.set_interrupt_sink(rec)
    return rec


def cfg_read32(dev, off: int) -> int:
    return struct.unpack("<I", dev.region_read(CFG, off, 4))[0]


def cfg_write32(dev, off: int, value: int) -> None:
    dev.region_write(CFG, off, struct.pack("<I", value))


def cfg_read16(dev, off: int) -> int:
    return struct.unpack("<H", dev.region_read(CFG, off, 2))[0]


def cfg_write16(dev, off: int, value: int) -> None:
    dev.region_write(CFG, off, struct.pack("<H", value))
