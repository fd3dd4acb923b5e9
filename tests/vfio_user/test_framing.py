"""The one framer (device/vfio_user/framing.py) as the host client and the libvfio-user large-write
path use it: a MessageReader on a real socketpair, with real fds passed by SCM_RIGHTS.  Each
behaviour holds for both ways of reading: a message up to its end and no further (first_read 0,
the large-write path's, on a socket libvfio-user reads too), and one recvmsg() of up to
first_read bytes from a message's start (the host client's)."""
from __future__ import annotations

import os
import socket
import time

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import Command
from hugepfn.device.vfio_user.framing import MessageReader, Unframeable
from hugepfn.device.vfio_user.transport import TooManyFds, send_with_fds


FIRST_READS = pytest.mark.parametrize("first_read", [0, 63, 4096], ids=["exact", "read-63", "read-4096"])


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@FIRST_READS
def test_pipelined_messages_come_out_whole_each_with_its_own_fds(pair, first_read):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=first_read)
    first = wire.message(1, Command.REGION_READ, wire.REGION_ACCESS.pack(0x40, 0, 4) + b"abcd", wire.MSG_TYPE_REPLY)
    second = wire.message(2, Command.DMA_MAP, b"x" * 32)
    r, w = os.pipe()
    a.sendall(first)
    send_with_fds(a, second, [r])
    assert reader.read() == (1, Command.REGION_READ, wire.MSG_TYPE_REPLY, 0,
                             wire.REGION_ACCESS.pack(0x40, 0, 4) + b"abcd", ())
    msg_id, cmd, flags, error_no, payload, fds = reader.read()
    assert (msg_id, cmd, flags, error_no, payload, len(fds)) == (2, Command.DMA_MAP, 0, 0, b"x" * 32, 1)
    os.write(w, b"!")
    assert os.read(fds[0], 1) == b"!"             # the fd that came with the second message
    for fd in (r, w, *fds):
        os.close(fd)


@FIRST_READS
def test_an_impossible_msg_size_ends_the_stream(pair, first_read):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=first_read)
    a.sendall(wire.HEADER.pack(7, Command.REGION_READ, 8, 0, 0))
    for _ in range(2):                              # and every later read says the same
        with pytest.raises(Unframeable, match=r"^msg_size 8 outside 16\.\.4096$") as exc:
            reader.read()
        assert (exc.value.msg_id, exc.value.cmd, exc.value.size) == (7, Command.REGION_READ, 8)


@FIRST_READS
def test_a_peer_that_leaves_mid_message_is_a_reset_with_what_arrived(pair, first_read):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=first_read)
    a.sendall(wire.HEADER.pack(1, Command.REGION_WRITE, 64, 0, 0) + bytes(10))
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError):
        reader.read()
    assert reader.cut_short == 26


@FIRST_READS
def test_a_deadline_leaves_an_incomplete_message_buffered(pair, first_read):
    a, b = pair
    b.settimeout(0.05)
    reader = MessageReader(b, 4096, first_read=first_read)
    a.sendall(wire.HEADER.pack(1, Command.REGION_WRITE, 64, 0, 0) + bytes(4))
    with pytest.raises(TimeoutError, match=r"^message left incomplete \(20 bytes of it arrived\)$"):
        reader.read(deadline=time.monotonic())
    a.sendall(bytes(44))                            # the rest: the message completes
    assert reader.read()[:5] == (1, Command.REGION_WRITE, 0, 0, bytes(48))


@FIRST_READS
def test_more_fds_than_the_reader_takes_drops_the_message_not_the_stream(pair, first_read):
    a, b = pair
    reader = MessageReader(b, 4096, max_fds=1, first_read=first_read)
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    send_with_fds(a, wire.message(1, Command.DMA_MAP, b"y" * 8), fds)
    a.sendall(wire.message(2, Command.DEVICE_GET_INFO))
    with pytest.raises(TooManyFds):
        reader.read()
    assert reader.read() == (2, Command.DEVICE_GET_INFO, 0, 0, b"", ())
    for fd in fds:
        os.close(fd)


def _waiting(sock: socket.socket) -> bytes:
    """What is still in the socket, left there (b"" when nothing is)."""
    try:
        return sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_the_exact_reader_never_takes_bytes_of_the_next_message(pair):
    a, b = pair
    reader = MessageReader(b, 4096)
    first, second = wire.message(1, Command.DEVICE_GET_INFO, bytes(16)), wire.message(2, Command.DEVICE_RESET)
    a.sendall(first + second)
    assert reader.read() == (1, Command.DEVICE_GET_INFO, 0, 0, bytes(16), ())
    assert _waiting(b) == second                    # left for the socket's other reader


def test_one_read_brings_several_messages_and_they_come_out_in_order(pair):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=4096)
    messages = [wire.message(i, Command.REGION_READ, wire.REGION_ACCESS.pack(8 * i, 0, 8) + bytes([i]) * 8,
                             wire.MSG_TYPE_REPLY) for i in range(3)]
    a.sendall(b"".join(messages))
    assert reader.read() == (0, Command.REGION_READ, wire.MSG_TYPE_REPLY, 0, wire.REGION_ACCESS.pack(0, 0, 8) + bytes(8), ())
    assert _waiting(b) == b""                       # one recvmsg() took all three
    assert [reader.read()[:5] for _ in range(2)] == [
        (i, Command.REGION_READ, wire.MSG_TYPE_REPLY, 0, wire.REGION_ACCESS.pack(8 * i, 0, 8) + bytes([i]) * 8)
        for i in (1, 2)]


def test_a_read_that_ends_in_a_next_message_gives_it_the_fds_and_keeps_its_start(pair):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=40)
    first = wire.message(1, Command.DEVICE_GET_INFO, bytes(8))              # 24 bytes, no fds
    second = wire.message(2, Command.DMA_MAP, b"z" * 32)                    # 48 bytes, an fd
    r, w = os.pipe()
    a.sendall(first)
    send_with_fds(a, second, [r])
    assert reader.read() == (1, Command.DEVICE_GET_INFO, 0, 0, bytes(8), ())
    assert len(_waiting(b)) == 24 + 48 - 40         # the read took 16 bytes of the second one
    msg_id, cmd, _, _, payload, fds = reader.read()
    assert (msg_id, cmd, payload, len(fds)) == (2, Command.DMA_MAP, b"z" * 32, 1)
    os.write(w, b"?")
    assert os.read(fds[0], 1) == b"?"
    for fd in (r, w, *fds):
        os.close(fd)


def test_a_whole_message_before_an_impossible_header_is_read_first(pair):
    a, b = pair
    reader = MessageReader(b, 4096, first_read=4096)
    a.sendall(wire.message(5, Command.DEVICE_RESET, b"", wire.MSG_TYPE_REPLY) + wire.HEADER.pack(6, Command.REGION_READ, 9, 0, 0))
    assert reader.read() == (5, Command.DEVICE_RESET, wire.MSG_TYPE_REPLY, 0, b"", ())
    with pytest.raises(Unframeable, match=r"^msg_size 9 outside 16\.\.4096$"):
        reader.read()
