"""DMA_MAP: with an fd (the server mmaps the client's memfd) and without one."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.abi import vfio_user as wire

from .helpers import Command, error_of, memfd, still_answers

RW = wire.DMA_MAP_FLAG_READ | wire.DMA_MAP_FLAG_WRITE
GIB = 1 << 30


def dma_map(address, size, offset=0, flags=RW, argsz=32):
    return wire.DmaMap.build({"argsz": argsz, "flags": flags, "offset": offset, "address": address,
                              "size": size})


def device_dma(server, backend):
    """(read, write) of guest memory as the device does DMA, for either backend."""
    if backend == "python":
        return server.engine.dma.read, server.engine.dma.write
    return server.dma_read, server.dma_write


# Partial overlaps: the protocol text says EEXIST (the python engine); libvfio-user answers EINVAL.
OVERLAP_ERRNO = {"python": errno.EEXIST, "libvfio-user": errno.EINVAL}


def test_map_with_memfd_lets_the_server_read_and_write_guest_memory(client, server, backend):
    fd = memfd(1 << 20)
    client.dma_map(4 * GIB, 1 << 20, fd)
    os.pwrite(fd, b"guest data", 0x2000)
    read, write = device_dma(server, backend)
    assert read(4 * GIB + 0x2000, 10) == b"guest data"
    write(4 * GIB + 0x3000, b"from device")
    assert os.pread(fd, 11, 0x3000) == b"from device"
    os.close(fd)


def test_map_with_fd_offset(client, server, backend):
    fd = memfd(1 << 20)
    os.pwrite(fd, b"at offset 64K", 0x10000)
    client.dma_map(GIB, 0x10000, fd, offset=0x10000)
    read, _ = device_dma(server, backend)
    assert read(GIB, 13) == b"at offset 64K"
    os.close(fd)


def test_fdless_maps_are_accepted_including_the_devices_own_bar(client):
    # What QEMU sends for the device's own BAR mmap area, other BARs and ROM.
    client.dma_map(0xFFE00001000, 0x1FFFFF000)
    client.dma_map(0xFEBC0000, 0x1000)
    still_answers(client)


def test_overlapping_map_is_refused(raw, backend):
    raw.request(Command.DMA_MAP, dma_map(0x100000, 0x10000))
    for address, size in [(0xFF000, 0x2000), (0x10F000, 0x1000), (0x0, 0x200000), (0x100000, 0x20000)]:
        assert error_of(raw, Command.DMA_MAP, dma_map(address, size)) == OVERLAP_ERRNO[backend]
    raw.request(Command.DMA_MAP, dma_map(0x110000, 0x1000))   # adjacent is fine
    still_answers(raw)


def test_python_engine_refuses_an_exact_duplicate_and_empty_or_wrapping_maps(raw, backend):
    if backend != "python":
        pytest.skip("libvfio-user accepts an exact duplicate (idempotent), size 0 and a wrapping range")
    raw.request(Command.DMA_MAP, dma_map(0x100000, 0x10000))
    assert error_of(raw, Command.DMA_MAP, dma_map(0x100000, 0x10000)) == errno.EEXIST
    assert error_of(raw, Command.DMA_MAP, dma_map(0x1000, 0)) == errno.EINVAL
    assert error_of(raw, Command.DMA_MAP, dma_map((1 << 64) - 0x1000, 0x2000)) == errno.EINVAL


@pytest.mark.parametrize("payload", [
    dma_map(0x1000, 0x1000, argsz=16),
    dma_map(0x1000, 0x1000)[:24], b"",
], ids=["argsz16", "short", "empty"])
def test_malformed_maps_are_einval(raw, payload):
    assert error_of(raw, Command.DMA_MAP, payload) == errno.EINVAL
    still_answers(raw)


def test_fd_map_past_the_end_of_the_file_is_refused(raw, backend):
    if backend != "python":
        pytest.skip("libvfio-user maps without checking the file size")
    fd = memfd(0x1000)
    assert error_of(raw, Command.DMA_MAP, dma_map(GIB, 0x10000), [fd]) == errno.EINVAL
    assert error_of(raw, Command.DMA_MAP, dma_map(GIB, 0x1000, offset=0x800), [fd]) == errno.EINVAL
    os.close(fd)
    still_answers(raw)


def test_unknown_flags_and_non_file_fds_are_refused_by_the_python_engine(raw, backend):
    if backend != "python":
        pytest.skip("python engine strictness")
    assert error_of(raw, Command.DMA_MAP, dma_map(GIB, 0x1000, flags=0x80)) == errno.EINVAL
    r, w = os.pipe()
    assert error_of(raw, Command.DMA_MAP, dma_map(GIB, 0x1000), [r]) == errno.EINVAL
    os.close(r)
    os.close(w)
