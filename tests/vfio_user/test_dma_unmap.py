"""DMA_UNMAP: exact match, UNMAP_ALL, every reference dropped."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.abi import vfio_user as wire

from .helpers import Command, error_of, memfd, still_answers
from .test_dma_map import GIB, device_dma, dma_map


def dma_unmap(address, size, flags=0, argsz=24):
    return wire.DmaUnmap.build({"argsz": argsz, "flags": flags, "address": address, "size": size})


def test_unmap_echoes_the_request(raw):
    raw.request(Command.DMA_MAP, dma_map(GIB, 0x10000))
    reply = raw.request(Command.DMA_UNMAP, dma_unmap(GIB, 0x10000))
    assert wire.DmaUnmap.parse(reply.payload) == wire.DmaUnmap.parse(dma_unmap(GIB, 0x10000))


def test_unmap_needs_an_exact_match(raw):
    raw.request(Command.DMA_MAP, dma_map(GIB, 0x10000))
    for address, size in [(GIB, 0x1000), (GIB + 0x1000, 0xF000), (2 * GIB, 0x10000)]:
        assert error_of(raw, Command.DMA_UNMAP, dma_unmap(address, size)) == errno.ENOENT
    raw.request(Command.DMA_UNMAP, dma_unmap(GIB, 0x10000))
    raw.request(Command.DMA_MAP, dma_map(GIB, 0x10000))        # the range is free again


def test_unmapped_memory_is_no_longer_reachable_by_the_device(client, server, backend):
    fd = memfd(1 << 20)
    client.dma_map(GIB, 1 << 20, fd)
    client.dma_unmap(GIB, 1 << 20)
    read, _ = device_dma(server, backend)
    with pytest.raises(OSError):
        read(GIB, 8)
    if backend == "python":
        assert len(server.engine.dma) == 0
    os.close(fd)


def test_unmap_all_drops_every_window(client, server, backend):
    fds = [memfd(0x10000) for _ in range(3)]
    for n, fd in enumerate(fds):
        client.dma_map((n + 1) * GIB, 0x10000, fd)
    client.dma_map(8 * GIB, 0x1000)
    client.dma_unmap_all()
    read, _ = device_dma(server, backend)
    for n in range(3):
        with pytest.raises(OSError):
            read((n + 1) * GIB, 8)
    client.dma_map(GIB, 0x10000, fds[0])                       # everything is free again
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("payload", [
    dma_unmap(GIB, 0x1000, flags=wire.DMA_UNMAP_FLAG_ALL), dma_unmap(0, 0, flags=0x80),
    dma_unmap(0, 0, argsz=8), dma_unmap(0, 0)[:16],
], ids=["all-with-range", "unknown-flag", "argsz8", "short"])
def test_malformed_unmaps_are_einval(raw, payload):
    assert error_of(raw, Command.DMA_UNMAP, payload) == errno.EINVAL
    still_answers(raw)
