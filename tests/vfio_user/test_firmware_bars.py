"""Firmware-style BAR placement through an attached client: the device's own BAR
registers end up holding the addresses the host model will use."""
from __future__ import annotations

import pytest

from hugepfn.device.gpu import GpuDevice
from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient
from hugepfn.host.vfio_user.firmware import MMIO32_BASE, assign_bar_addresses, size_bars


def test_bars_are_sized_and_placed_naturally_aligned(client, device, facts):
    placed = assign_bar_addresses(client)
    assert [(p.index, p.size, p.is_64bit) for p in placed] == \
        [(b.index, b.size, b.is_64bit) for b in sorted(device.profile.bars, key=lambda b: b.index)]
    for p in placed:
        assert p.address % p.size == 0
        assert device.bar_address(p.index) == p.address
        assert (p.address >= 1 << 32) == p.is_64bit
        assert p.pfn == p.address >> 12
    assert device.memory_enabled


def test_gpu_8g_memory_bar_lands_on_an_8g_boundary_above_4g(tmp_path):
    device = GpuDevice.from_profile("gpu-8g")
    path = tmp_path / "g.sock"
    choice, _ = backends.select_backend("python")
    with choice.Server(device, path), VfioUserClient.attach(path) as client:
        assert size_bars(client) == [(0, 16 << 20, False, False), (2, 8 << 30, True, True), (4, 0x4000, False, False)]
        placed = {p.index: p for p in assign_bar_addresses(client)}
        assert placed[2].address == 8 << 30 and placed[2].pfn == 0x200000
        assert placed[0].address == MMIO32_BASE and placed[4].address == MMIO32_BASE + (16 << 20)
        assert device.bar_address(2) == 8 << 30
    device.close()


def test_a_32bit_window_too_small_is_a_clear_error(client):
    with pytest.raises(ValueError, match="does not fit the 32-bit MMIO window"):
        assign_bar_addresses(client, mmio32_base=0xFEBF_0000)
