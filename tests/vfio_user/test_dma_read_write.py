"""DMA_READ / DMA_WRITE (server -> client): device DMA into a window mapped without an fd.

The client keeps the memory (as QEMU does without share=on) and answers the
server's messages while it waits for its own replies.
"""
from __future__ import annotations

import errno
import os
import threading

import pytest

from .helpers import memfd
from .test_dma_map import GIB


def _while_client_waits(client, action):
    """Run the device-side ``action`` in a thread while the client does a request
    (the client answers server commands only while it waits for a reply)."""
    result = {}

    def run():
        try:
            result["value"] = action()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        client.get_device_info()
        thread.join(0.01)
    return result


def test_device_reads_and_writes_guest_memory_by_messages(client, server, backend):
    if backend != "python":
        pytest.skip("message-based DMA is driven through the python server's dma_read/dma_write")
    guest = memfd(1 << 20)
    os.pwrite(guest, b"guest bytes by message", 0x800)
    client.dma_map(2 * GIB, 1 << 20, guest, send_fd=False)
    got = _while_client_waits(client, lambda: server.dma_read(2 * GIB + 0x800, 22))
    assert got == {"value": b"guest bytes by message"}
    done = _while_client_waits(client, lambda: server.dma_write(2 * GIB + 0x10, b"device wrote this"))
    assert "error" not in done
    assert os.pread(guest, 17, 0x10) == b"device wrote this"
    assert client.server_requests_handled == 2
    os.close(guest)


def test_client_refuses_dma_outside_its_memory(client, server, backend):
    if backend != "python":
        pytest.skip("message-based DMA is driven through the python server's dma_read/dma_write")
    client.dma_map(3 * GIB, 0x10000)                 # a window the client has no memory behind
    got = _while_client_waits(client, lambda: server.dma_read(3 * GIB, 8))
    assert isinstance(got["error"], OSError) and got["error"].errno == errno.EFAULT


def test_dma_without_a_client_or_window_fails_cleanly(server, client, backend):
    read = server.dma_read
    with pytest.raises(OSError):
        read(7 * GIB, 8)                            # no window there
