"""DEVICE_RESET: the device resets; DMA and IRQ wiring survive (as vfio-pci's reset)."""
from __future__ import annotations

from hugepfn.device.interface import VFIO_PCI_MSIX_IRQ_INDEX

from .helpers import wait_irq
from .small_device import DOORBELL


def test_reset_reaches_the_device(client, device):
    client.region_write(0, 0x40, b"dirty!!!")
    client.reset()
    assert device.resets >= 1
    assert client.region_read(0, 0x40, 8) == bytes(8)


def test_irq_wiring_survives_reset(client):
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 4)
    client.reset()
    client.region_write(0, DOORBELL, b"\x01")
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 1) == 1
