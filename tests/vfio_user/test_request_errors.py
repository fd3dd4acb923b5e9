"""Hostile and malformed messages: an error reply or a disconnect, never a crash, hang or leak."""
from __future__ import annotations

import errno
import os
import socket

import pytest

from hugepfn.device.vfio_user import wire
from hugepfn.device.vfio_user.transport import send_with_fds
from hugepfn.host.vfio_user import VfioUserClient, VfioUserProtocolError

from .helpers import Command, attach_after_hangup, error_of, read_request, still_answers


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("cmd", [0, 14, 15, 17, 18, 19, 99, 0xFFFF])
def test_unknown_or_unsupported_commands_get_einval(raw, cmd):
    assert error_of(raw, cmd, b"\0" * 32) == errno.EINVAL
    still_answers(raw)


@pytest.mark.parametrize("header", [
    wire.HEADER.pack(1, 9, 4, 0, 0),               # msg_size below the header size
    wire.HEADER.pack(1, 9, 0xFFFF_FFF0, 0, 0),     # msg_size of 4 GiB
    wire.HEADER.pack(1, 9, 16, 0xFFFF_FFFF, 0),    # every flag bit
], ids=["tiny-size", "huge-size", "all-flags"])
def test_malformed_header_ends_the_connection_and_the_server_lives_on(raw, socket_path, header, backend):
    raw.sock.sendall(header)
    if backend == "python":
        with pytest.raises(VfioUserProtocolError):
            raw.receive()
    raw.close()
    with attach_after_hangup(socket_path, backend) as c:
        still_answers(c)


def test_pipelined_requests_are_answered_in_order(raw, device, facts):
    config = device.region_read(7, 0, 64)
    ids = [raw.send(Command.REGION_READ, read_request(7, n, 1)) for n in range(64)]
    for n, msg_id in enumerate(ids):
        reply = raw.wait_reply(msg_id, Command.REGION_READ)
        assert reply.payload[16:] == config[n:n + 1]


def test_no_reply_commands_get_no_reply(raw, device, backend, facts):
    if backend != "python":
        pytest.skip("libvfio-user does not honour NO_REPLY on commands it receives")
    raw.send(Command.REGION_WRITE, read_request(facts.regs, facts.scratch, 4) + b"quit", flags=wire.FLAG_NO_REPLY)
    raw.send(Command.REGION_READ, read_request(0, 0xFFFF_FFFF, 4), flags=wire.FLAG_NO_REPLY)   # fails silently
    msg_id = raw.send(Command.REGION_READ, read_request(facts.regs, facts.scratch, 4))
    reply = raw.receive()
    assert (reply.msg_id, reply.payload[16:]) == (msg_id, b"quit")


def test_unsolicited_reply_is_ignored(raw, backend):
    if backend != "python":
        pytest.skip("libvfio-user treats a stray reply as an unknown command")
    raw.sock.sendall(wire.message(77, Command.DMA_READ, b"\0" * 16, wire.MSG_TYPE_REPLY))
    still_answers(raw)


def test_fds_on_commands_that_take_none_are_not_leaked(raw, server, backend):
    if backend != "python":
        pytest.skip("counts this process's fds, where the python server runs")
    before = open_fds()
    for _ in range(50):
        efds = [os.eventfd(0) for _ in range(4)]
        error_of(raw, Command.REGION_READ, read_request(0, 0xFFFF_FFFF, 4), efds)
        raw.request(Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
            {"argsz": 16, "flags": 0, "num_regions": 0, "num_irqs": 0}), efds)
        for fd in efds:
            os.close(fd)
    assert open_fds() == before


def test_more_fds_than_max_msg_fds_is_refused_without_leak(raw, socket_path, backend):
    before = open_fds()
    efds = [os.eventfd(0) for _ in range(40)]
    payload = wire.SetIrqs.build({"argsz": 20, "flags": 0x24, "index": 2, "start": 0, "count": 4, "data": b""})
    try:
        send_with_fds(raw.sock, wire.message(9, Command.DEVICE_SET_IRQS, payload), efds)
        reply = raw.receive()
        assert reply.flags & wire.FLAG_ERROR
    except (VfioUserProtocolError, ConnectionError):
        pass   # dropping the connection is an acceptable answer
    for fd in efds:
        os.close(fd)
    raw.close()
    with attach_after_hangup(socket_path, backend) as c:
        still_answers(c)
    if backend == "python":
        assert open_fds() <= before


def test_a_client_that_never_reads_replies_is_not_a_hang_for_others(raw, socket_path, backend):
    if backend != "python":
        pytest.skip("server-side send timeout of the python backend")
    raw.sock.setblocking(False)
    request = wire.message(1, Command.REGION_READ, read_request(7, 0, 4096))
    sent = 0
    try:
        for _ in range(2000):                       # ~8 MiB of replies nobody reads
            raw.sock.send(request)
            sent += 1
    except BlockingIOError:
        pass
    raw.close()                                     # the server's sends fail; it drops us
    with VfioUserClient.attach(socket_path) as c:
        still_answers(c)
    assert sent > 0


def test_raw_garbage_before_version(server, socket_path, backend):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    sock.sendall(os.urandom(4096))
    sock.close()
    with attach_after_hangup(socket_path, backend) as c:
        still_answers(c)
