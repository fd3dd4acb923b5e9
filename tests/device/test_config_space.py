"""Config-space rules: identity, COMMAND/STATUS semantics, BAR sizing, capabilities, FLR, ReBAR."""
from __future__ import annotations

import errno
import struct

import pytest

from hugepfn.abi import pci
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX as CFG
from hugepfn.device import pci_formats as pf
from hugepfn.device.config_layout import (AER_OFFSET, MSIX_OFFSET, PCIE_OFFSET, PM_OFFSET,
                                          REBAR_OFFSET, VNDR_OFFSET, rebar_control_offset,
                                          walk_capabilities)
from hugepfn.device.gpu import GpuDevice

from .conftest import cfg_read16, cfg_read32, cfg_write16, cfg_write32


def test_identity_and_class(tiny):
    assert cfg_read16(tiny, pci.PCI_VENDOR_ID) == 0x10DE
    assert cfg_read16(tiny, pci.PCI_DEVICE_ID) == 0x2330
    assert cfg_read32(tiny, pci.PCI_REVISION_ID) == 0x030200A1      # class 3D controller, rev a1
    assert cfg_read16(tiny, pci.PCI_SUBSYSTEM_VENDOR_ID) == 0x10DE
    assert cfg_read16(tiny, pci.PCI_SUBSYSTEM_VENDOR_ID + 2) == 0x16C1
    assert tiny.region_read(CFG, pci.PCI_HEADER_TYPE, 1) == b"\x00"
    assert tiny.region_read(CFG, pci.PCI_INTERRUPT_PIN, 1) == b"\x01"


def test_identity_is_read_only(tiny):
    cfg_write32(tiny, 0, 0x12345678)
    cfg_write32(tiny, pci.PCI_REVISION_ID, 0xFFFFFFFF)
    assert cfg_read32(tiny, 0) == 0x233010DE
    assert cfg_read32(tiny, pci.PCI_REVISION_ID) == 0x030200A1


def test_command_writable_bits_and_memory_enable(tiny):
    assert tiny.memory_enabled is False
    cfg_write16(tiny, pci.PCI_COMMAND, 0xFFFF)
    assert cfg_read16(tiny, pci.PCI_COMMAND) == (pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER
                                                 | pci.PCI_COMMAND_PARITY | pci.PCI_COMMAND_SERR
                                                 | pci.PCI_COMMAND_INTX_DISABLE)
    assert tiny.memory_enabled and tiny.bus_master_enabled
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MASTER)
    assert tiny.memory_enabled is False and tiny.bus_master_enabled


def test_io_space_bit_is_hardwired_to_zero(tiny):
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_IO)
    assert cfg_read16(tiny, pci.PCI_COMMAND) == 0


def test_status_w1c_bits(tiny):
    tiny.config.set_field(pci.PCI_STATUS, 2, pci.PCI_STATUS_CAP_LIST | pci.PCI_STATUS_REC_MASTER_ABORT
                          | pci.PCI_STATUS_DETECTED_PARITY)
    cfg_write16(tiny, pci.PCI_STATUS, 0)                               # writing 0 changes nothing
    assert cfg_read16(tiny, pci.PCI_STATUS) & pci.PCI_STATUS_REC_MASTER_ABORT
    cfg_write16(tiny, pci.PCI_STATUS, pci.PCI_STATUS_REC_MASTER_ABORT)  # 1 clears only that bit
    assert cfg_read16(tiny, pci.PCI_STATUS) == pci.PCI_STATUS_CAP_LIST | pci.PCI_STATUS_DETECTED_PARITY
    cfg_write16(tiny, pci.PCI_STATUS, 0xFFFF)                          # cap list bit is read-only
    assert cfg_read16(tiny, pci.PCI_STATUS) == pci.PCI_STATUS_CAP_LIST


def test_command_write_through_dword_does_not_clear_status_by_accident(tiny):
    tiny.config.set_field(pci.PCI_STATUS, 2, pci.PCI_STATUS_CAP_LIST | pci.PCI_STATUS_SIG_SYSTEM_ERROR)
    cfg_write32(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY)
    assert cfg_read32(tiny, pci.PCI_COMMAND) == ((pci.PCI_STATUS_CAP_LIST | pci.PCI_STATUS_SIG_SYSTEM_ERROR) << 16
                                                 | pci.PCI_COMMAND_MEMORY)


def test_bar_flags_type_bits(tiny):
    assert cfg_read32(tiny, 0x10) == 0x0                          # BAR0 32-bit, non-prefetchable
    assert cfg_read32(tiny, 0x18) == 0xC                          # BAR2 64-bit prefetchable
    assert cfg_read32(tiny, 0x1C) == 0x0                          # BAR3 = upper half of BAR2
    assert cfg_read32(tiny, 0x20) == 0x0                          # BAR4 32-bit
    assert cfg_read32(tiny, 0x14) == 0 and cfg_read32(tiny, 0x24) == 0


@pytest.mark.parametrize("off, size_mask", [
    (0x10, 0xFFFF0000),          # BAR0 64 KiB
    (0x20, 0xFFFFC000),          # BAR4 16 KiB
])
def test_bar_sizing_32bit(tiny, off, size_mask):
    cfg_write32(tiny, off, 0xFFFFFFFF)
    assert cfg_read32(tiny, off) == size_mask
    cfg_write32(tiny, off, 0xE0001234)                        # low bits below the size are dropped
    assert cfg_read32(tiny, off) == 0xE0001234 & size_mask


def test_bar_sizing_64bit_tiny(tiny):
    cfg_write32(tiny, 0x18, 0xFFFFFFFF)
    cfg_write32(tiny, 0x1C, 0xFFFFFFFF)
    low, high = cfg_read32(tiny, 0x18), cfg_read32(tiny, 0x1C)
    assert low == 0xFC00000C                                   # 64 MiB, 64-bit prefetchable
    assert high == 0xFFFFFFFF
    size = ~((high << 32 | low) & ~0xF) + 1 & (1 << 64) - 1
    assert size == 64 << 20


@pytest.mark.parametrize("profile, size", [("gpu-8g", 8 << 30), ("nvgrace", 128 << 30), ("gpu-1t", 1 << 40)])
def test_bar_sizing_64bit_large(profile, size):
    with GpuDevice.from_profile(profile) as dev:
        cfg_write32(dev, 0x18, 0xFFFFFFFF)
        cfg_write32(dev, 0x1C, 0xFFFFFFFF)
        value = cfg_read32(dev, 0x1C) << 32 | cfg_read32(dev, 0x18)
        assert value & 0xF == 0xC
        assert (~(value & ~0xF) + 1) & (1 << 64) - 1 == size
        cfg_write32(dev, 0x18, 0)
        cfg_write32(dev, 0x1C, 0x200)
        assert dev.bar_address(2) == 0x200 << 32


def test_unused_bars_and_expansion_rom_are_absent(tiny):
    for off in (0x14, 0x24, pci.PCI_ROM_ADDRESS):
        cfg_write32(tiny, off, 0xFFFFFFFF)
        assert cfg_read32(tiny, off) == 0


def test_interrupt_line_and_cache_line_are_writable(tiny):
    tiny.region_write(CFG, pci.PCI_INTERRUPT_LINE, b"\x0b")
    tiny.region_write(CFG, pci.PCI_CACHE_LINE_SIZE, b"\x10")
    tiny.region_write(CFG, pci.PCI_INTERRUPT_PIN, b"\x04")       # pin is read-only
    assert tiny.region_read(CFG, pci.PCI_INTERRUPT_LINE, 2) == b"\x0b\x01"
    assert tiny.region_read(CFG, pci.PCI_CACHE_LINE_SIZE, 1) == b"\x10"


def test_capability_chain(tiny):
    caps = walk_capabilities(tiny.region_read(CFG, 0, 4096))
    assert caps == [(PM_OFFSET, pci.PCI_CAP_ID_PM), (PCIE_OFFSET, pci.PCI_CAP_ID_EXP),
                    (MSIX_OFFSET, pci.PCI_CAP_ID_MSIX), (VNDR_OFFSET, pci.PCI_CAP_ID_VNDR),
                    (AER_OFFSET, 0x10000 | pci.PCI_EXT_CAP_ID_ERR)]
    assert cfg_read16(tiny, pci.PCI_STATUS) & pci.PCI_STATUS_CAP_LIST


def test_rebar_profile_adds_the_extended_capability():
    with GpuDevice.from_profile("rebar") as dev:
        caps = walk_capabilities(dev.region_read(CFG, 0, 4096))
        assert caps[-1] == (REBAR_OFFSET, 0x10000 | pci.PCI_EXT_CAP_ID_REBAR)


def test_msix_capability_fields_and_control(tiny):
    cap = pf.MsixCap.parse(tiny.region_read(CFG, MSIX_OFFSET, pf.MSIX_CAP_SIZE))
    assert cap.msg_control == 7                 # 8 vectors
    assert cap.table == 0 | 4 and cap.pba == 0x1000 | 4
    cfg_write16(tiny, MSIX_OFFSET + 2, 0xFFFF)
    assert cfg_read16(tiny, MSIX_OFFSET + 2) == 0xC007     # enable + mask-all writable, size RO
    assert tiny.msix_enabled and tiny.msix.function_masked
    cfg_write16(tiny, MSIX_OFFSET + 2, pci.PCI_MSIX_FLAGS_ENABLE)
    assert tiny.msix_enabled and not tiny.msix.function_masked


def test_pm_control_state_and_pme_status_w1c(tiny):
    cfg_write16(tiny, PM_OFFSET + 4, 0x0003)                            # D3hot
    assert cfg_read16(tiny, PM_OFFSET + 4) == 0x0003 | pci.PCI_PM_CTRL_NO_SOFT_RESET
    tiny.config.set_field(PM_OFFSET + 4, 2, pci.PCI_PM_CTRL_PME_STATUS | pci.PCI_PM_CTRL_NO_SOFT_RESET)
    cfg_write16(tiny, PM_OFFSET + 4, pci.PCI_PM_CTRL_PME_STATUS)
    assert cfg_read16(tiny, PM_OFFSET + 4) == pci.PCI_PM_CTRL_NO_SOFT_RESET


def test_pcie_devsta_w1c_and_devctl_rw(tiny):
    tiny.config.set_field(PCIE_OFFSET + 0x0A, 2, 0x0005)
    cfg_write16(tiny, PCIE_OFFSET + 0x0A, 0x0001)
    assert cfg_read16(tiny, PCIE_OFFSET + 0x0A) == 0x0004
    cfg_write16(tiny, PCIE_OFFSET + 8, 0x000F)                          # error reporting enables
    assert cfg_read16(tiny, PCIE_OFFSET + 8) == 0x000F
    cfg_write32(tiny, PCIE_OFFSET + 4, 0)                               # DevCap read-only
    assert cfg_read32(tiny, PCIE_OFFSET + 4) & pci.PCI_EXP_DEVCAP_FLR


def test_flr_resets_function_state_but_keeps_memory_and_poison(tiny):
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY)
    cfg_write32(tiny, 0x10, 0xE0000000)
    tiny.region_write(2, 0x1000, b"keep")
    tiny.poison.inject(bar=2, offset=0x2000)
    tiny.region_write(0, 0x40, struct.pack("<I", 0xABCD))               # scratch register
    cfg_write16(tiny, PCIE_OFFSET + 8, pci.PCI_EXP_DEVCTL_BCR_FLR)
    assert cfg_read16(tiny, PCIE_OFFSET + 8) & pci.PCI_EXP_DEVCTL_BCR_FLR == 0   # reads back 0
    assert cfg_read16(tiny, PCIE_OFFSET + 8) == 0x2910                  # reset value
    assert cfg_read32(tiny, 0x10) == 0 and not tiny.memory_enabled
    assert tiny.region_read(0, 0x40, 4) == bytes(4)
    assert tiny.region_read(2, 0x1000, 4) == b"keep"
    assert tiny.poison.is_poisoned(2, 0x2000, 64)


def test_aer_registers(tiny):
    base = AER_OFFSET
    header = pf.ExtCapHeader.parse(tiny.region_read(CFG, base, 4))
    assert (header.cap_id, header.version, header.next) == (pci.PCI_EXT_CAP_ID_ERR, 2, 0)
    tiny.config.set_field(base + 4, 4, pci.PCI_ERR_UNC_POISON_TLP | pci.PCI_ERR_UNC_UNSUP)
    cfg_write32(tiny, base + 4, pci.PCI_ERR_UNC_POISON_TLP)            # W1C
    assert cfg_read32(tiny, base + 4) == pci.PCI_ERR_UNC_UNSUP
    cfg_write32(tiny, base + 8, 0xFFFFFFFF)                           # mask: defined bits only
    assert cfg_read32(tiny, base + 8) == 0x03FFF030
    cfg_write32(tiny, base + 0x18, 0xFFFFFFFF)                        # cap/control read-only here
    assert cfg_read32(tiny, base + 0x18) == 0


def test_sub_dword_and_unaligned_writes_use_byte_enables(tiny):
    cfg_write32(tiny, 0x20, 0)
    tiny.region_write(CFG, 0x23, b"\xE1")                  # top byte of BAR4 only
    assert cfg_read32(tiny, 0x20) == 0xE1000000
    tiny.region_write(CFG, 0x21, b"\xFF\xFF\xFF")          # spans bytes 1..3: bits below 16 KiB stay 0
    assert cfg_read32(tiny, 0x20) == 0xFFFFC000
    tiny.region_write(CFG, 0x3A, b"\x00\x00\x0B\x01")      # crosses into interrupt line/pin
    assert tiny.region_read(CFG, 0x3C, 2) == b"\x0b\x01"


@pytest.mark.parametrize("off, count", [(4095, 2), (-1, 1), (4096, 4), (0, 0)])
def test_out_of_range_config_access_is_einval(tiny, off, count):
    with pytest.raises(OSError) as exc:
        tiny.region_read(CFG, off, count)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        tiny.region_write(CFG, off, b"\0" * count)
    assert exc.value.errno == errno.EINVAL


def test_full_4k_read_matches_construct_view(tiny):
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY)
    cfg_write32(tiny, 0x18, 0xFC000000)
    cfg_write32(tiny, 0x1C, 0x00000200)
    raw = tiny.region_read(CFG, 0, 4096)
    header = pf.Type0Header.parse(raw)
    assert header.command == pci.PCI_COMMAND_MEMORY
    assert header.bars[2] == 0xFC00000C and header.bars[3] == 0x200
    assert header.class_code == 0x030200
    assert pf.Type0Header.build(header) == raw[:64]
    for off in range(0, 4096, 4):                          # fast path and slow path agree
        assert tiny.config.read32(off) == struct.unpack_from("<I", raw, off)[0]
        assert tiny.region_read(CFG, off, 4) == tiny.region_read_mc(CFG, off, 4)[0]


def test_device_reset_restores_config(tiny):
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)
    cfg_write16(tiny, MSIX_OFFSET + 2, pci.PCI_MSIX_FLAGS_ENABLE)
    before = bytes(tiny.config._image)
    tiny.reset()
    assert tiny.region_read(CFG, 0, 4096) == before
    assert not tiny.msix_enabled and not tiny.memory_enabled


class TestResizableBar:
    @pytest.fixture
    def dev(self):
        with GpuDevice.from_profile("rebar") as dev:
            yield dev

    def test_capability_and_control_decode(self, dev):
        cap = pf.rebar_cap(1).parse(dev.region_read(CFG, REBAR_OFFSET, 12))
        entry = cap.entries[0]
        # supported sizes 256 MiB (code 8) .. 16 GiB (code 14): bits 12..18
        assert entry.capability == sum(1 << (4 + c) for c in range(8, 15))
        assert entry.control == 2 | 1 << 5 | 8 << 8     # BAR 2, one resizable BAR, 256 MiB

    def test_resize_changes_sizing_region_and_sparse_area(self, dev):
        ctrl = rebar_control_offset(0)
        cfg_write32(dev, ctrl, 12 << 8)                  # 4 GiB
        assert cfg_read32(dev, ctrl) >> 8 & 0x3F == 12
        cfg_write32(dev, 0x18, 0xFFFFFFFF)
        cfg_write32(dev, 0x1C, 0xFFFFFFFF)
        assert cfg_read32(dev, 0x18) == 0x0000000C and cfg_read32(dev, 0x1C) == 0xFFFFFFFF
        info = dev.region_info(2)
        assert info.size == 4 << 30
        assert info.sparse_areas[0].size == 4 << 30

    def test_unsupported_size_is_ignored(self, dev):
        ctrl = rebar_control_offset(0)
        cfg_write32(dev, ctrl, 20 << 8)                  # 1 TiB: not offered
        assert cfg_read32(dev, ctrl) >> 8 & 0x3F == 8
        assert dev.region_info(2).size == 256 << 20

    def test_reset_restores_the_default_size(self, dev):
        cfg_write32(dev, rebar_control_offset(0), 14 << 8)
        assert dev.bar_size(2) == 16 << 30
        dev.reset()
        assert dev.bar_size(2) == 256 << 20
        cfg_write32(dev, 0x18, 0xFFFFFFFF)
        assert cfg_read32(dev, 0x18) == 0xF000000C


def test_memory_enable_listener(tiny):
    seen = []
    tiny.add_memory_enable_listener(seen.append)
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MASTER)          # no change of MEM
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY)
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)
    tiny.region_write(CFG, pci.PCI_COMMAND, b"\x00")                    # byte write turns it off
    cfg_write16(tiny, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY)
    tiny.reset()                                                       # reset turns it off too
    assert seen == [True, False, True, False]


# A per-byte reference model of the mask table: any sequence of writes of any size and
# alignment must leave config space exactly as the model says (dwords with side-effect
# hooks that rewrite state, i.e. PCIe Device Control with FLR, are left out).
from hypothesis import given, settings                       # noqa: E402
from hypothesis import strategies as st                       # noqa: E402

_FLR_DWORD = PCIE_OFFSET + 8


def _writes():
    offsets = st.integers(0, 4095)
    return st.lists(st.tuples(offsets, st.binary(min_size=1, max_size=8)), max_size=30)


@given(writes=_writes())
@settings(max_examples=150, deadline=None)
def test_writes_follow_the_mask_table_byte_by_byte(writes):
    with GpuDevice.from_profile("tiny") as dev:
        cfg = dev.config
        rw = bytes(b for i in range(0, 4096, 4) for b in cfg.rw_mask32(i).to_bytes(4, "little"))
        w1c = bytes(b for i in range(0, 4096, 4) for b in cfg.w1c_mask32(i).to_bytes(4, "little"))
        model = bytearray(dev.region_read(CFG, 0, 4096))
        for off, data in writes:
            data = data[:4096 - off]
            if off <= _FLR_DWORD + 3 and off + len(data) > _FLR_DWORD:
                continue
            dev.region_write(CFG, off, data)
            for k, v in enumerate(data):
                i = off + k
                model[i] = ((model[i] & ~rw[i]) | (v & rw[i])) & ~(v & w1c[i]) & 0xFF
        assert dev.region_read(CFG, 0, 4096) == bytes(model)
