"""DEVICE_GET_REGION_INFO: the argsz dance, the sparse-mmap cap, one fd per region."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX

from .helpers import Command, error_of, region_info_request, still_answers


def test_fd_backed_bar_needs_two_requests_and_gets_one_fd(raw, facts):
    first = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(facts.mem))
    info = wire.RegionInfo.parse(first.payload)
    assert first.fds == () and len(first.payload) == 32
    assert info.argsz == 32 + 16 + 16 * len(facts.mmap_areas)     # struct + sparse cap
    assert info.flags == 0x7 and info.size == facts.mem_size and info.cap_offset == 0
    second = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(facts.mem, info.argsz))
    full = wire.RegionInfo.parse(second.payload)
    assert full.flags == 0xF and full.cap_offset == 32 and full.argsz == len(second.payload) == info.argsz
    assert len(second.fds) == 1
    caps = wire.parse_region_info_caps(second.payload)
    sparse = caps[wire.REGION_INFO_CAP_SPARSE_MMAP]
    assert (sparse.header.version, sparse.header.next) == (1, 0)
    assert tuple((a.offset, a.size) for a in sparse.areas) == facts.mmap_areas
    assert os.fstat(second.fds[0]).st_size >= facts.mem_size
    os.close(second.fds[0])


def test_bigger_argsz_than_needed_is_fine(raw, facts):
    reply = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(facts.mem, 4096))
    assert wire.RegionInfo.parse(reply.payload).argsz == 48 + 16 * len(facts.mmap_areas)
    assert len(reply.fds) == 1
    os.close(reply.fds[0])


@pytest.mark.parametrize("which", ["regs", "msix_bar", "config"])
def test_trapped_regions_have_no_fd_and_no_caps(raw, facts, which):
    index = VFIO_PCI_CONFIG_REGION_INDEX if which == "config" else getattr(facts, which)
    size = facts.device.region_info(index).size
    reply = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(index))
    info = wire.RegionInfo.parse(reply.payload)
    assert (info.argsz, info.flags, info.index, info.size, info.cap_offset) == (32, 3, index, size, 0)
    assert reply.fds == ()


def test_unused_bars_have_size_and_flags_zero(raw, facts):
    assert facts.unused_bars
    for index in facts.unused_bars:
        reply = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(index))
        info = wire.RegionInfo.parse(reply.payload)
        assert (info.size, info.flags, info.index, reply.fds) == (0, 0, index, ())


def test_client_attach_collects_every_region(client, device, facts):
    assert sorted(client.regions) == list(range(device.num_regions))
    mem = client.regions[facts.mem]
    assert mem.argsz_requests == 2 and mem.fd is not None and mem.sparse_areas == facts.mmap_areas


@pytest.mark.parametrize("payload", [
    region_info_request(9), region_info_request(0xFFFF_FFFF), region_info_request(2, 16),
    region_info_request(2)[:24], b"",
], ids=["index9", "index-max", "argsz16", "short", "empty"])
def test_bad_requests_are_einval(raw, payload):
    assert error_of(raw, Command.DEVICE_GET_REGION_INFO, payload) == errno.EINVAL
    still_answers(raw)
