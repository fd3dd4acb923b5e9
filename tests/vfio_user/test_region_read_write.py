"""REGION_READ / REGION_WRITE on the GpuDevice: config space, trapped registers, the
memory BAR through both paths (messages and mmap), bounds, max_data_xfer_size."""
from __future__ import annotations

import errno

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX

from .helpers import Command, error_of, read_request, still_answers

CONFIG = VFIO_PCI_CONFIG_REGION_INDEX


def test_config_space_reads_the_device_ids(client, device, facts):
    assert client.config_read(0, 2) == device.profile.vendor_id
    assert client.config_read(2, 2) == device.profile.device_id
    assert client.config_read(0x08, 4) >> 8 == 0x030200            # 3D controller
    assert client.region_read(CONFIG, 0, 4096) == device.region_read(CONFIG, 0, 4096)


def test_config_write_reaches_the_device_command_register(client, device):
    client.config_write(0x04, 2, 0x0006)                             # memory + bus master
    assert device.memory_enabled and device.bus_master_enabled
    assert client.config_read(0x04, 2) & 0x6 == 0x6


def test_bar_sizing_of_the_64bit_memory_bar_through_config_writes(client, facts):
    offset = 0x10 + 4 * facts.mem
    client.config_write(offset, 4, 0xFFFF_FFFF)
    client.config_write(offset + 4, 4, 0xFFFF_FFFF)
    low, high = client.config_read(offset, 4), client.config_read(offset + 4, 4)
    size = ((~((high << 32) | (low & ~0xF))) & ((1 << 64) - 1)) + 1
    assert size == facts.mem_size
    assert low & 0xF == 0xC                                          # 64-bit, prefetchable


def test_trapped_register_round_trip(client, device, facts):
    client.region_write(facts.regs, facts.scratch, b"\x11\x22\x33\x44\x55\x66\x77\x88")
    assert device.registers.scratch[:2] == [0x44332211, 0x88776655]
    assert client.region_read(facts.regs, facts.scratch, 8) == b"\x11\x22\x33\x44\x55\x66\x77\x88"
    assert client.region_read(facts.regs, facts.ident, 4) == facts.ids.to_bytes(4, "little")


def test_read_reply_echoes_offset_region_count(raw, facts):
    reply = raw.request(Command.REGION_READ, read_request(facts.regs, 0x10, 8))
    assert wire.REGION_ACCESS.unpack_from(reply.payload) == (0x10, facts.regs, 8)
    assert len(reply.payload) == 16 + 8


def test_write_reply_echoes_without_data(raw, facts):
    reply = raw.request(Command.REGION_WRITE, read_request(facts.regs, facts.scratch, 4) + b"abcd")
    assert reply.payload == read_request(facts.regs, facts.scratch, 4)


def test_mmap_writes_are_visible_through_region_read(client, facts):
    [area] = client.map_region(facts.mem)
    assert (area.offset, area.size) == facts.mmap_areas[0]
    area.mapping[0x10:0x20] = b"written by mmap!"
    assert client.region_read(facts.mem, area.offset + 0x10, 16) == b"written by mmap!"
    last = area.size - 8
    area.mapping[last:last + 8] = b"the end."
    assert client.region_read(facts.mem, area.offset + last, 8) == b"the end."


def test_region_writes_are_visible_through_mmap(client, facts):
    [area] = client.map_region(facts.mem)
    client.region_write(facts.mem, area.offset + 0x3000, b"written by REGION_WRITE")
    assert area.mapping[0x3000:0x3000 + 23] == b"written by REGION_WRITE"


def test_large_transfer_is_split_by_the_client(client, facts):
    data = bytes(range(256)) * (3 * 4096)          # 3 MiB > 1 MiB max_data_xfer_size
    client.region_write(facts.mem, 0x1000, data)
    assert client.region_read(facts.mem, 0x1000, len(data)) == data


def test_count_above_max_data_xfer_size_is_einval(raw, facts):
    limit = raw.max_data_xfer_size
    assert error_of(raw, Command.REGION_READ, read_request(facts.mem, 0, limit + 1)) == errno.EINVAL
    reply = raw.request(Command.REGION_READ, read_request(facts.mem, 0, limit))
    assert len(reply.payload) == 16 + limit


def _out_of_range(facts):
    return [(facts.regs, facts.regs_size - 4, 8), (facts.regs, facts.regs_size, 4),
            (facts.regs, (1 << 64) - 4, 8), (facts.mem, facts.mem_size, 4), (facts.mem, facts.mem_size - 4, 8),
            (CONFIG, 4096, 4), (facts.unused_bars[0], 0, 4), (9, 0, 4), (0xFFFF_FFFF, 0, 4)]


def test_out_of_range_read_and_write_are_einval(raw, facts):
    for region, offset, count in _out_of_range(facts):
        assert error_of(raw, Command.REGION_READ, read_request(region, offset, count)) == errno.EINVAL
        assert error_of(raw, Command.REGION_WRITE, read_request(region, offset, count) + bytes(count)) \
            == errno.EINVAL
    still_answers(raw)


def test_write_whose_data_disagrees_with_count_is_einval(raw, device, facts):
    assert error_of(raw, Command.REGION_WRITE, read_request(facts.regs, facts.scratch, 8) + b"1234") == errno.EINVAL
    assert error_of(raw, Command.REGION_WRITE, read_request(facts.regs, facts.scratch, 2) + b"1234") == errno.EINVAL
    assert device.registers.scratch[:2] == [0, 0]


def test_device_errnos_reach_the_client(raw, device, facts):
    # registers take aligned dwords only: the device says EINVAL
    assert error_of(raw, Command.REGION_WRITE, read_request(facts.regs, facts.scratch, 2) + b"ab") == errno.EINVAL
    # a trapped read of poisoned memory fails like copy_mc: EIO
    device.inject_poison(bar=facts.mem, offset=0x2000, granularity=64)
    assert error_of(raw, Command.REGION_READ, read_request(facts.mem, 0x1FF8, 16)) == errno.EIO
    reply = raw.request(Command.REGION_READ, read_request(facts.mem, 0x1FF8, 8))   # just before it: fine
    assert len(reply.payload) == 24
    still_answers(raw)
