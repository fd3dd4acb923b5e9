"""DEVICE_RESET: the device resets (registers, MSI-X); memory and IRQ wiring survive."""
from __future__ import annotations

from hugepfn.abi.vfio import VFIO_PCI_MSIX_IRQ_INDEX

from .helpers import wait_irq


def test_reset_reaches_the_device(client, device, facts):
    client.region_write(facts.regs, facts.scratch, b"dirty!!!")
    facts.enable_msix(client)
    [area] = client.map_region(facts.mem)
    area.mapping[0:4] = b"kept"
    client.reset()
    assert client.region_read(facts.regs, facts.scratch, 8) == bytes(8)
    assert not device.msix_enabled
    assert client.region_read(facts.mem, area.offset, 4) == b"kept"


def test_irq_wiring_survives_reset(client, facts):
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, facts.msix_vectors)
    client.reset()
    facts.enable_msix(client)
    facts.ring(client, 1)
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 1) == 1
