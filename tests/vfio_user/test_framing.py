"""The one framer (device/vfio_user/framing.py) as the host client and the libvfio-user large-write
path use it: a MessageReader on a real socketpair, with real fds passed by SCM_RIGHTS."""
from __future__ import annotations

import os
import socket
import time

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import Command
from hugepfn.device.vfio_user.framing import MessageReader, Unframeable
from hugepfn.device.vfio_user.transport import TooManyFds, send_with_fds


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_pipelined_messages_come_out_whole_each_with_its_own_fds(pair):
    a, b = pair
    reader = MessageReader(b, 4096)
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


def test_an_impossible_msg_size_ends_the_stream(pair):
    a, b = pair
    reader = MessageReader(b, 4096)
    a.sendall(wire.HEADER.pack(7, Command.REGION_READ, 8, 0, 0))
    for _ in range(2):                              # and every later read says the same
        with pytest.raises(Unframeable, match=r"^msg_size 8 outside 16\.\.4096$") as exc:
            reader.read()
        assert (exc.value.msg_id, exc.value.cmd, exc.value.size) == (7, Command.REGION_READ, 8)


def test_a_peer_that_leaves_mid_message_is_a_reset_with_what_arrived(pair):
    a, b = pair
    reader = MessageReader(b, 4096)
    a.sendall(wire.HEADER.pack(1, Command.REGION_WRITE, 64, 0, 0) + bytes(10))
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError):
        reader.read()
    assert reader.cut_short == 26


def test_a_deadline_leaves_an_incomplete_message_buffered(pair):
    a, b = pair
    b.settimeout(0.05)
    reader = MessageReader(b, 4096)
    a.sendall(wire.HEADER.pack(1, Command.REGION_WRITE, 64, 0, 0) + bytes(4))
    with pytest.raises(TimeoutError, match=r"^message left incomplete \(20 bytes of it arrived\)$"):
        reader.read(deadline=time.monotonic())
    a.sendall(bytes(44))                            # the rest: the message completes
    assert reader.read()[:5] == (1, Command.REGION_WRITE, 0, 0, bytes(48))


def test_more_fds_than_the_reader_takes_drops_the_message_not_the_stream(pair):
    a, b = pair
    reader = MessageReader(b, 4096, max_fds=1)
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    send_with_fds(a, wire.message(1, Command.DMA_MAP, b"y" * 8), fds)
    a.sendall(wire.message(2, Command.DEVICE_GET_INFO))
    with pytest.raises(TooManyFds):
        reader.read()
    assert reader.read() == (2, Command.DEVICE_GET_INFO, 0, 0, b"", ())
    for fd in fds:
        os.close(fd)
