"""DEVICE_GET_INFO."""
from __future__ import annotations

import errno

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET

from .helpers import Command, error_of, still_answers


def test_reports_pci_reset_regions_and_irqs(client, device):
    reply = client.request(Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
        {"argsz": 16, "flags": 0, "num_regions": 0, "num_irqs": 0}))
    info = wire.DeviceInfo.parse(reply.payload)
    assert (info.argsz, info.flags) == (16, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET)
    assert (info.num_regions, info.num_irqs) == (device.num_regions, device.num_irqs)
    assert len(reply.payload) == 16


def test_short_argsz_is_einval(raw):
    assert error_of(raw, Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
        {"argsz": 8, "flags": 0, "num_regions": 0, "num_irqs": 0})) == errno.EINVAL
    assert error_of(raw, Command.DEVICE_GET_INFO, b"\x10\0\0\0") == errno.EINVAL
    still_answers(raw)
