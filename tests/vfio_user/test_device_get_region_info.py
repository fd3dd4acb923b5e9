"""DEVICE_GET_REGION_INFO: the argsz dance, the sparse-mmap cap, one fd per region."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.device.interface import VFIO_PCI_CONFIG_REGION_INDEX
from hugepfn.device.vfio_user import wire

from .helpers import Command, error_of, region_info_request, still_answers
from .small_device import MEM_SIZE, REGS_SIZE, TRAPPED


def test_fd_backed_bar_needs_two_requests_and_gets_one_fd(raw):
    first = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(2))
    info = wire.RegionInfo.parse(first.payload)
    assert first.fds == () and len(first.payload) == 32
    assert info.argsz == 32 + 16 + 16          # struct + sparse cap with one area
    assert info.flags == 0x7 and info.size == MEM_SIZE and info.cap_offset == 0
    second = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(2, info.argsz))
    full = wire.RegionInfo.parse(second.payload)
    assert full.flags == 0xF and full.cap_offset == 32 and full.argsz == len(second.payload) == 64
    assert len(second.fds) == 1
    caps = wire.parse_region_info_caps(second.payload)
    sparse = caps[wire.REGION_INFO_CAP_SPARSE_MMAP]
    assert (sparse.header.version, sparse.header.next) == (1, 0)
    assert [(a.offset, a.size) for a in sparse.areas] == [(TRAPPED, MEM_SIZE - TRAPPED)]
    assert os.fstat(second.fds[0]).st_size >= MEM_SIZE
    os.close(second.fds[0])


def test_bigger_argsz_than_needed_is_fine(raw):
    reply = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(2, 4096))
    assert wire.RegionInfo.parse(reply.payload).argsz == 64 and len(reply.fds) == 1
    os.close(reply.fds[0])


@pytest.mark.parametrize("index,size", [(0, REGS_SIZE), (VFIO_PCI_CONFIG_REGION_INDEX, 4096)])
def test_trapped_regions_have_no_fd_and_no_caps(raw, index, size):
    reply = raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(index))
    info = wire.RegionInfo.parse(reply.payload)
    assert (info.argsz, info.flags, info.index, info.size, info.cap_offset) == (32, 3, index, size, 0)
    assert reply.fds == ()


@pytest.mark.parametrize("index", [1, 3, 4, 5])
def test_unused_bars_have_size_and_flags_zero(raw, index):
    info = wire.RegionInfo.parse(raw.request(Command.DEVICE_GET_REGION_INFO, region_info_request(index)).payload)
    assert (info.size, info.flags, info.index) == (0, 0, index)


def test_client_attach_collects_every_region(client, device):
    assert sorted(client.regions) == list(range(device.num_regions))
    bar2 = client.regions[2]
    assert bar2.argsz_requests == 2 and bar2.fd is not None and bar2.sparse_areas == ((TRAPPED, MEM_SIZE - TRAPPED),)


@pytest.mark.parametrize("payload", [
    region_info_request(9), region_info_request(0xFFFF_FFFF), region_info_request(2, 16),
    region_info_request(2)[:24], b"",
], ids=["index9", "index-max", "argsz16", "short", "empty"])
def test_bad_requests_are_einval(raw, payload):
    assert error_of(raw, Command.DEVICE_GET_REGION_INFO, payload) == errno.EINVAL
    still_answers(raw)
