"""Requests that reach the server together, and requests whose sizes grow and shrink.

The python server reads the start of a message with one recvmsg() of up to 63 bytes
(device/vfio_user/server.py), so one read may end inside the next message or take whole ones
with it.  Whatever the backend reads: every request is answered, in order, byte for byte, and
fds go with the request they were sent with.  To have requests queued on the socket when the
server reads, the server's thread is kept busy (``held``) while the client sends.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import Command
from hugepfn.device.vfio_user.transport import send_with_fds

from .helpers import memfd, read_request

GUEST = 1 << 32            # where the tests map guest memory


class Scratch:
    """Requests on the device's scratch registers, each with the reply it must get: the
    registers are plain read/write memory, zeroed by a reset."""

    def __init__(self, facts) -> None:
        self.regs, self.base = facts.regs, facts.scratch
        self.value = bytearray(64)
        self.next_id = 100

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def write(self, data: bytes) -> tuple[bytes, bytes]:
        msg_id, access = self._id(), read_request(self.regs, self.base, len(data))
        self.value[:len(data)] = data
        return (wire.message(msg_id, Command.REGION_WRITE, access + data),
                wire.message(msg_id, Command.REGION_WRITE, access, wire.MSG_TYPE_REPLY))

    def read(self, count: int, junk: bytes = b"") -> tuple[bytes, bytes]:
        """``junk``: bytes after the access struct, which both backends ignore (it makes a
        request of another size)."""
        msg_id, access = self._id(), read_request(self.regs, self.base, count)
        return (wire.message(msg_id, Command.REGION_READ, access + junk),
                wire.message(msg_id, Command.REGION_READ, access + bytes(self.value[:count]), wire.MSG_TYPE_REPLY))

    def reset(self) -> tuple[bytes, bytes]:
        msg_id = self._id()
        self.value[:] = bytes(64)
        return (wire.message(msg_id, Command.DEVICE_RESET),
                wire.message(msg_id, Command.DEVICE_RESET, b"", wire.MSG_TYPE_REPLY))


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise AssertionError(f"the server closed after {len(data)} of {size} bytes")
        data += more
    return data


def replies(sock: socket.socket, expected: list[bytes]) -> list[bytes]:
    """As many replies as ``expected``, each read to exactly the length the expected one has."""
    return [receive_exactly(sock, len(reply)) for reply in expected]


@contextlib.contextmanager
def held(server):
    """The server's thread busy in a job of ours until the block ends: what the client sends
    meanwhile is all on the socket when the server next reads."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait(10)

    thread = threading.Thread(target=server.call_in_owner, args=(hold,))
    thread.start()
    try:
        assert entered.wait(10), "the server never ran the job"
        yield
    finally:
        release.set()
        thread.join(10)


def exchange(raw, request: bytes, reply: bytes) -> None:
    raw.sock.sendall(request)
    assert replies(raw.sock, [reply]) == [reply]


# (name, requests) on a Scratch; request sizes in bytes in the comments
SEQUENCES = {
    "two-reads": lambda s: [s.read(8), s.read(8)],                                   # 32 32
    "three-sizes": lambda s: [s.write(b"abcdefgh"), s.read(4), s.read(8, bytes(31))],  # 40 32 63
    "grow-then-shrink": lambda s: [s.read(4), s.write(bytes(range(24))), s.write(bytes(range(48))),  # 32 56 80
                                   s.read(48), s.reset(), s.read(8), s.write(b"wxyz"), s.read(4)],  # 32 16 32 36 32
    "shrink-then-grow": lambda s: [s.write(bytes(range(1, 49))), s.read(8, bytes(31)), s.reset(),  # 80 63 16
                                   s.read(4), s.write(bytes(range(2, 26))), s.read(24)],           # 32 56 32
}


@pytest.mark.parametrize("previous", [16, 32, 63, 80], ids=lambda n: f"after-{n}-bytes")
@pytest.mark.parametrize("how", ["one-by-one", "one-send", "held-sends"])
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_requests_are_answered_in_order_byte_for_byte(raw, server, facts, sequence, how, previous):
    scratch = Scratch(facts)
    # The message before the sequence: one of each size class (header only, fits one read,
    # fills it, needs two), so that sizes grow and shrink across the start of the sequence too.
    primer = {16: scratch.reset, 32: lambda: scratch.read(8), 63: lambda: scratch.read(8, bytes(31)),
              80: lambda: scratch.write(bytes(48))}[previous]()
    assert len(primer[0]) == previous
    exchange(raw, *primer)
    pairs = SEQUENCES[sequence](scratch)
    expected = [reply for _, reply in pairs]
    if how == "one-by-one":
        for request, reply in pairs:
            exchange(raw, request, reply)
        return
    if how == "one-send":
        raw.sock.sendall(b"".join(request for request, _ in pairs))
    else:
        with held(server):
            for request, _ in pairs:
                raw.sock.sendall(request)
    assert replies(raw.sock, expected) == expected
    exchange(raw, *scratch.read(8))                       # and the stream is still in step


def dma_map(msg_id: int, address: int) -> bytes:
    return wire.message(msg_id, Command.DMA_MAP, wire.DmaMap.build(
        {"argsz": 32, "flags": 3, "offset": 0, "address": address, "size": 0x10000}))


# Requests without fds sent before and after a DMA_MAP that carries its fd on its own sendmsg()
AROUND_THE_MAP = {
    "read-then-map": (lambda s: [s.read(8)], lambda s: []),                       # 32 | 48
    "reset-then-map": (lambda s: [s.reset()], lambda s: []),                      # 16 | 48
    "write-read-then-map": (lambda s: [s.write(b"1234"), s.read(4)], lambda s: []),   # 36 32 | 48
    "map-then-read-write": (lambda s: [], lambda s: [s.read(8), s.write(b"abcd")]),   # 48 | 32 36
}


@pytest.mark.parametrize("around", list(AROUND_THE_MAP))
def test_an_fd_goes_to_the_queued_request_it_was_sent_with(raw, server, facts, backend, around):
    scratch = Scratch(facts)
    guest = memfd(0x10000)
    os.pwrite(guest, b"from the guest", 0x100)
    ahead, behind = (make(scratch) for make in AROUND_THE_MAP[around])
    with held(server):
        for request, _ in ahead:
            raw.sock.sendall(request)
        send_with_fds(raw.sock, dma_map(7, GUEST), [guest])
        for request, _ in behind:
            raw.sock.sendall(request)
    os.close(guest)
    expected = ([reply for _, reply in ahead] + [wire.message(7, Command.DMA_MAP, b"", wire.MSG_TYPE_REPLY)]
                + [reply for _, reply in behind])
    assert replies(raw.sock, expected) == expected
    assert server.status()["dma_windows"] == [(GUEST, 0x10000, True)]
    if backend == "python":
        assert server.dma_read(GUEST + 0x100, 14) == b"from the guest"
    exchange(raw, *scratch.read(8))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_too_many_fds_on_a_queued_request_refuse_that_one_only(raw, server, facts, backend):
    scratch = Scratch(facts)
    before = open_fds()
    first, first_reply = scratch.read(8)
    info = wire.message(8, Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
        {"argsz": 16, "flags": 0, "num_regions": 0, "num_irqs": 0}))
    efds = [os.eventfd(0) for _ in range(20)]
    with held(server):
        raw.sock.sendall(first)
        send_with_fds(raw.sock, info, efds)
    for fd in efds:
        os.close(fd)
    assert replies(raw.sock, [first_reply]) == [first_reply]
    reply = raw.receive()
    if backend == "python":     # more than the 16 it takes (docs/vfio-user-conformance.md)
        assert (reply.msg_id, reply.flags, reply.error_no) == (8, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    else:                       # libvfio-user takes up to 1024
        assert (reply.msg_id, reply.flags, len(reply.payload)) == (8, wire.MSG_TYPE_REPLY, 16)
    exchange(raw, *scratch.read(8))
    if backend == "python":
        assert open_fds() <= before


@pytest.mark.parametrize("arrived", [5, 16, 20], ids=lambda n: f"{n}-bytes-of-the-next")
def test_a_request_is_answered_while_the_next_one_is_still_coming(raw, facts, arrived):
    scratch = Scratch(facts)
    (first, first_reply), (second, second_reply) = scratch.read(8), scratch.write(b"abcdefgh")
    raw.sock.sendall(first + second[:arrived])
    assert replies(raw.sock, [first_reply]) == [first_reply]
    raw.sock.sendall(second[arrived:])
    assert replies(raw.sock, [second_reply]) == [second_reply]
    exchange(raw, *scratch.read(8))
