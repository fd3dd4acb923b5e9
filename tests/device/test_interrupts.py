"""MSI-X table/PBA masking, INTx, the ERR index, and what the backend sees through the sink."""
from __future__ import annotations

import struct

import pytest

from hugepfn.abi import vfio
from hugepfn.abi import pci
from hugepfn.abi import registers as r
from hugepfn.device.config_layout import MSIX_OFFSET
from hugepfn.device.msix import msix_bar_layout

from .conftest import cfg_write16

MSIX, INTX, ERR = vfio.VFIO_PCI_MSIX_IRQ_INDEX, vfio.VFIO_PCI_INTX_IRQ_INDEX, vfio.VFIO_PCI_ERR_IRQ_INDEX


def enable_msix(dev, mask_all=False):
    value = pci.PCI_MSIX_FLAGS_ENABLE | (pci.PCI_MSIX_FLAGS_MASKALL if mask_all else 0)
    cfg_write16(dev, MSIX_OFFSET + 2, value)


def unmask_entry(dev, vector, addr=0xFEE00000, data=0x4000 + 0x20):
    dev.region_write(4, vector * 16, struct.pack("<IIII", addr, 0, data, 0))


def program_masked_entry(dev, vector, addr=0xFEE00000, data=0x4000 + 0x20):
    """What a driver does before enabling a vector: address and data, mask bit still set."""
    dev.region_write(4, vector * 16, struct.pack("<IIII", addr, 0, data, 1))


def ring(dev, vector):
    dev.region_write(0, r.REG_DOORBELL, struct.pack("<I", vector))


def pba(dev):
    lay = msix_bar_layout(dev.profile.msix_vectors)
    return int.from_bytes(dev.region_read(4, lay.pba_offset, lay.pba_bytes), "little")


def test_irq_info(tiny):
    counts = {i: tiny.irq_info(i).count for i in range(vfio.VFIO_PCI_NUM_IRQS)}
    assert counts == {INTX: 1, vfio.VFIO_PCI_MSI_IRQ_INDEX: 0, MSIX: 8, ERR: 1, vfio.VFIO_PCI_REQ_IRQ_INDEX: 1}
    assert all(tiny.irq_info(i).flags == vfio.VFIO_IRQ_INFO_EVENTFD for i in range(5))
    with pytest.raises(OSError):
        tiny.irq_info(5)


def test_table_comes_out_of_reset_masked(tiny):
    for v in range(8):
        addr, data, ctrl = tiny.msix.entry(v)
        assert ctrl == 1 and addr == 0 and data == 0
    assert tiny.region_read(4, 12, 4) == b"\x01\0\0\0"


def test_masked_vector_latches_pba_then_fires_on_unmask(tiny, sink):
    program_masked_entry(tiny, 5)
    enable_msix(tiny)
    ring(tiny, 5)
    assert sink.calls == [] and pba(tiny) == 1 << 5
    unmask_entry(tiny, 5)
    assert sink.calls == [(MSIX, 5)] and pba(tiny) == 0
    ring(tiny, 5)
    assert sink.calls == [(MSIX, 5), (MSIX, 5)]


def test_function_mask(tiny, sink):
    unmask_entry(tiny, 2)
    enable_msix(tiny, mask_all=True)
    ring(tiny, 2)
    assert sink.calls == [] and pba(tiny) == 1 << 2
    enable_msix(tiny, mask_all=False)
    assert sink.calls == [(MSIX, 2)] and pba(tiny) == 0


def test_client_mask_from_set_irqs(tiny, sink):
    enable_msix(tiny)
    for v in range(8):
        unmask_entry(tiny, v)
    tiny.irq_state_changed(MSIX, 0, 4, True)
    ring(tiny, 1)
    ring(tiny, 6)
    assert sink.calls == [(MSIX, 6)] and pba(tiny) == 1 << 1
    tiny.irq_state_changed(MSIX, 1, 1, False)
    assert sink.calls == [(MSIX, 6), (MSIX, 1)]


def test_pba_is_read_only_and_table_entry_reads_back(tiny):
    unmask_entry(tiny, 3, addr=0xFEE01000, data=0x4041)
    assert tiny.msix.entry(3) == (0xFEE01000, 0x4041, 0)
    lay = msix_bar_layout(8)
    tiny.msix.pending = 0xFF
    tiny.region_write(4, lay.pba_offset, b"\0" * 8)
    assert pba(tiny) == 0xFF


def test_table_write_must_be_dword_aligned(tiny):
    with pytest.raises(OSError):
        tiny.region_write(4, 2, b"\0\0")


def test_doorbell_out_of_range_vector_is_dropped(tiny, sink):
    enable_msix(tiny)
    ring(tiny, 99)
    assert sink.calls == [] and pba(tiny) == 0


def test_error_vector_when_msix_enabled(tiny, sink):
    enable_msix(tiny)
    unmask_entry(tiny, tiny.profile.error_vector)
    tiny.poison.inject(bar=2, offset=0x40)
    assert sink.calls == [(MSIX, 1)]


def test_error_vector_masked_goes_to_pba(tiny, sink):
    program_masked_entry(tiny, tiny.profile.error_vector)
    enable_msix(tiny)
    tiny.poison.inject(bar=2, offset=0x40)
    assert sink.calls == [] and pba(tiny) == 1 << tiny.profile.error_vector


def test_a_client_that_never_writes_the_table_is_gated_by_set_irqs_only(tiny, sink):
    # QEMU's vfio-user-pci emulates the table itself and never forwards table writes:
    # the reset-time mask bits must not hold its vectors back (they did, in make e2e).
    enable_msix(tiny)
    assert tiny.msix.entry(tiny.profile.error_vector)[2] == 1      # still masked in the table
    tiny.poison.inject(bar=2, offset=0x40)
    assert sink.calls == [(MSIX, tiny.profile.error_vector)] and pba(tiny) == 0
    tiny.irq_state_changed(MSIX, tiny.profile.error_vector, 1, True)   # SET_IRQS MASK
    ring(tiny, tiny.profile.error_vector)
    assert len(sink.calls) == 1 and pba(tiny) == 1 << tiny.profile.error_vector
    tiny.irq_state_changed(MSIX, tiny.profile.error_vector, 1, False)  # SET_IRQS UNMASK
    assert sink.calls == [(MSIX, tiny.profile.error_vector)] * 2 and pba(tiny) == 0


def test_reset_gives_the_table_back_to_set_irqs(tiny, sink):
    program_masked_entry(tiny, 3)
    enable_msix(tiny)
    ring(tiny, 3)
    assert sink.calls == []
    tiny.reset()
    enable_msix(tiny)
    ring(tiny, 3)
    assert sink.calls == [(MSIX, 3)]


def test_err_index_when_msix_disabled(tiny, sink):
    tiny.poison.inject(bar=2, offset=0x40)
    assert sink.calls == [(ERR, 0)]


def test_intx_disable_and_level_semantics(tiny, sink):
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_INTX_DISABLE)
    ring(tiny, 0)
    assert sink.calls == []
    assert tiny.region_read(7, pci.PCI_STATUS, 2)[0] & pci.PCI_STATUS_INTERRUPT
    cfg_write16(tiny, pci.PCI_COMMAND, 0)                  # still asserted: delivered now
    assert sink.calls == [(INTX, 0)]
    tiny.region_write(0, r.REG_STATUS, struct.pack("<I", r.STATUS_INTX))    # deassert
    assert not tiny.region_read(7, pci.PCI_STATUS, 2)[0] & pci.PCI_STATUS_INTERRUPT
    assert not tiny.region_read(0, r.REG_STATUS, 1)[0] & r.STATUS_INTX


def test_intx_client_mask(tiny, sink):
    tiny.irq_state_changed(INTX, 0, 1, True)
    ring(tiny, 0)
    assert sink.calls == []
    tiny.irq_state_changed(INTX, 0, 1, False)
    assert sink.calls == [(INTX, 0)]


def test_no_sink_counts_instead_of_failing(tiny):
    tiny.poison.inject(bar=2, offset=0)
    assert tiny.interrupts_without_sink == 1


def test_reset_clears_msix_state(tiny, sink):
    enable_msix(tiny)
    ring(tiny, 4)
    tiny.irq_state_changed(MSIX, 0, 1, True)
    tiny.reset()
    assert not tiny.msix_enabled and pba(tiny) == 0
    assert tiny.msix.client_masked == {0}          # the client's SET_IRQS state is not the device's
    assert tiny.msix.entry(4)[2] == 1


def test_no_interrupt_pin_means_no_intx(tmp_path):
    from hugepfn.device.gpu import GpuDevice
    from hugepfn.fixtures import PROFILES
    from .conftest import Recorder
    path = tmp_path / "nopin.toml"
    path.write_text((PROFILES / "tiny.toml").read_text().replace("interrupt_pin = 1", "interrupt_pin = 0"))
    with GpuDevice.from_profile(path) as dev:
        rec = Recorder()
        dev.set_interrupt_sink(rec)
        assert dev.irq_info(INTX).count == 0
        assert dev.region_read(7, pci.PCI_INTERRUPT_PIN, 1) == b"\0"
        ring(dev, 0)
        assert rec.calls == [] and not dev.intx_asserted
