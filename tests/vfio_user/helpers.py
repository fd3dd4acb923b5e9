"""Small helpers shared by the conformance tests (raw messages over a live socket)."""
from __future__ import annotations

import os

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import Command
from hugepfn.host.vfio_user import VfioUserClient, VfioUserError

QEMU_CAPS = {"migration": {"pgsize": 4096, "max_bitmap_size": 268435456}, "max_msg_fds": 16,
             "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535, "write_multiple": True}


def error_of(client: VfioUserClient, cmd: int, payload: bytes = b"", fds=()) -> int:
    """Send a command that must fail; return the errno of its error reply.

    (The python engine's replies are header-only, checked in test_engine.py;
    libvfio-user echoes the request payload in some error replies.)
    """
    reply = client.wait_reply(client.send(cmd, payload, fds), cmd)
    assert reply.flags == wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, f"expected an error reply, got {reply}"
    assert reply.fds == ()
    return reply.error_no


def region_info_request(index: int, argsz: int = 32) -> bytes:
    return wire.RegionInfo.build({"argsz": argsz, "flags": 0, "index": index, "cap_offset": 0,
                                  "size": 0, "offset": 0})


def read_request(region: int, offset: int, count: int) -> bytes:
    return wire.REGION_ACCESS.pack(offset, region, count)


def memfd(size: int, name: str = "guest-ram") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def wait_irq(client: VfioUserClient, index: int, vector: int, timeout: float = 2.0) -> int:
    """Wait until the vector's eventfd fires (backends may deliver after the reply); its count."""
    import select
    fd = client.eventfds[(index, vector)]
    select.select([fd], [], [], timeout)
    return client.irq_count(index, vector)


def irq_counts(client: VfioUserClient, index: int, vectors: range) -> list[int]:
    """Counts of every vector after a round trip (so deferred deliveries have landed)."""
    client.get_device_info()
    return [client.irq_count(index, v) for v in vectors]


def attach_after_hangup(socket_path, backend: str) -> VfioUserClient:
    """Attach right after a previous client hung up.

    The python backend must accept at once.  The libvfio-user backend sometimes
    resets a client that arrives before it has noticed the previous hang-up (a
    race reported to its owner), so only there a reset attach is retried.
    """
    import time
    from hugepfn.host.vfio_user import VfioUserProtocolError
    if backend == "python":
        return VfioUserClient.attach(socket_path)
    for attempt in range(10):
        try:
            return VfioUserClient.attach(socket_path, timeout=2.0)
        except (VfioUserProtocolError, TimeoutError):
            time.sleep(0.05)
    raise AssertionError("server never accepted the next client")


def still_answers(client: VfioUserClient) -> None:
    """The server still answers a well-formed request correctly."""
    info = client.get_device_info()
    assert info.num_regions >= 9 and info.num_irqs >= 5


__all__ = ["Command", "VfioUserError", "QEMU_CAPS", "error_of", "region_info_request", "read_request",
           "memfd", "fd_is_open", "still_answers", "wait_irq", "irq_counts", "attach_after_hangup"]
