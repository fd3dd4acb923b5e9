"""No client holds the server: a client that stops reading, leaves a message half sent,
never negotiates or (with an idle limit) goes quiet is closed with its reason logged, and
the next client is served within 2 s.  Every backend, real sockets, real timings."""
from __future__ import annotations

import fcntl
import logging
import select
import socket
import struct
import termios
import time

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.device.vfio_user import backends
from hugepfn.device.vfio_user.limits import ConnectionLimits
from hugepfn.host.vfio_user import VfioUserClient, VfioUserProtocolError

from .helpers import QEMU_CAPS, Command, read_request, still_answers

LOGGERS = ("hugepfn.vfio_user", "hugepfn.device.vfio_user.backend_libvfio_user")


@pytest.fixture
def serve(backend, device, socket_path):
    """serve(**limits) -> a started server of this backend with those ConnectionLimits."""
    started = []

    def start(**limits):
        choice, _ = backends.select_backend(backend)
        server = choice.Server(device, socket_path, limits=ConnectionLimits(**limits))
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.WARNING)
    return lambda: [r.getMessage() for r in caplog.records if r.name in LOGGERS and r.levelno >= logging.WARNING]


def hung_up(sock: socket.socket, timeout: float) -> bool:
    """Wait until the server has closed its end (our unread replies do not count)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return bool(poller.poll(timeout * 1000))


def next_client_served(socket_path, within: float) -> float:
    """Attach a new client (retrying while the server refuses it); seconds it took."""
    started = time.monotonic()
    while True:
        try:
            with VfioUserClient.attach(socket_path, timeout=within) as c:
                still_answers(c)
            return time.monotonic() - started
        except (VfioUserProtocolError, ConnectionError, TimeoutError):
            assert time.monotonic() - started < within, "the next client was not served"
            time.sleep(0.02)


def test_a_client_that_stops_reading_is_closed_and_the_next_client_is_served(serve, socket_path, facts,
                                                                             warnings):
    serve()
    hog = VfioUserClient.connect(socket_path)
    hog.negotiate(QEMU_CAPS)
    hog.sock.setblocking(False)
    request = wire.message(1, Command.REGION_READ, read_request(facts.mem, 0, 1 << 20))
    pending, last_progress = memoryview(b""), time.monotonic()
    while time.monotonic() - last_progress < 0.3:     # until the server stops taking requests
        if not pending:
            pending = memoryview(request)
        try:
            pending = pending[hog.sock.send(pending):]
            last_progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    stopped_reading = time.monotonic()
    assert hung_up(hog.sock, 3.0), "the server kept a client that does not read its replies"
    closed_after = time.monotonic() - stopped_reading
    assert closed_after < 2.0
    assert any("closed the client" in m and "not reading its replies" in m for m in warnings())
    hog.close()
    assert next_client_served(socket_path, 2.0) < 2.0


@pytest.mark.parametrize("partial", [
    wire.HEADER.pack(1, Command.REGION_READ, 32, 0, 0)[:8],                     # half a header
    wire.HEADER.pack(1, Command.REGION_READ, 32, 0, 0) + bytes(4),             # header and a bit
], ids=["half-header", "half-body"])
def test_a_message_left_half_sent_closes_the_client(serve, socket_path, backend, warnings, partial):
    serve(recv_timeout=0.5)
    c = VfioUserClient.connect(socket_path)
    c.negotiate(QEMU_CAPS)
    sent = time.monotonic()
    c.sock.sendall(partial)
    assert hung_up(c.sock, 3.0), "a half-sent message held the server"
    if backend == "python":
        assert 0.5 <= time.monotonic() - sent < 1.5
        [message] = [m for m in warnings() if "closed the client" in m]
        assert message.endswith(f"message left incomplete for 0.5 s ({len(partial)} bytes of it arrived)")
    else:
        # libvfio-user drops a partial header at once (ECONNRESET from its header read)
        # and gives a short body up after SO_RCVTIMEO (recv_timeout)
        assert time.monotonic() - sent < 1.5
    c.close()
    assert next_client_served(socket_path, 2.0) < 2.0


def test_a_client_that_never_sends_version_is_closed(serve, socket_path, backend, warnings):
    serve(negotiate_timeout=0.5)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.connect(str(socket_path))
    connected = time.monotonic()
    assert hung_up(mute, 3.0), "a client that never negotiates held the server"
    assert 0.5 <= time.monotonic() - connected < 1.5
    if backend == "python":
        assert any(m.endswith("no VERSION within 0.5 s of connecting") for m in warnings())
    mute.close()
    assert next_client_served(socket_path, 2.0) < 2.0


def test_the_idle_limit_closes_a_quiet_client_and_only_a_quiet_one(serve, socket_path, warnings):
    serve(idle_limit=0.6)
    busy = VfioUserClient.attach(socket_path)
    for _ in range(8):                          # 1.2 s of traffic, never 0.6 s apart
        time.sleep(0.15)
        still_answers(busy)
    quiet_since = time.monotonic()
    assert hung_up(busy.sock, 3.0)
    assert 0.6 <= time.monotonic() - quiet_since < 1.6
    assert any(m.endswith("idle for 0.6 s (idle limit)") for m in warnings())
    busy.close()
    assert next_client_served(socket_path, 2.0) < 2.0


def test_without_an_idle_limit_a_quiet_client_stays(serve, socket_path):
    serve()
    with VfioUserClient.attach(socket_path) as c:
        time.sleep(2.5)                         # longer than every other default bound
        still_answers(c)


@pytest.mark.parametrize("limits,message", [
    ({"recv_timeout": 0}, "recv-timeout must be a positive number of seconds"),
    ({"idle_limit": -1}, "idle-limit must be a positive number of seconds"),
    ({"max_output": 1024}, "max-output must hold at least one full reply (2 MiB)"),
])
def test_limits_are_checked(limits, message):
    with pytest.raises(ValueError) as exc:
        ConnectionLimits(**limits)
    assert str(exc.value) == message


def _unread(sock: socket.socket) -> int:
    """What this end has sent that the peer has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


def test_a_message_begun_as_the_reply_queue_went_over_its_limit_keeps_its_clock(serve, socket_path, facts,
                                                                               backend, warnings):
    """The request whose reply puts the queue over max_output is answered, and the start of
    the next one, sent with it, waits (the python server's first read of a message, up to 63
    bytes, takes it too): its clock stands while the server does not read.  Once the client
    has read its replies, that message's rest has 0.5 s, as any half-sent message's."""
    if backend != "python":
        pytest.skip("max_output is the python server's reply queue (libvfio-user sends each reply blocking)")
    serve(max_output=2 << 20, send_timeout=10.0, recv_timeout=0.5)
    c = VfioUserClient.connect(socket_path)
    c.negotiate(QEMU_CAPS)
    big = wire.message(1, Command.REGION_READ, read_request(facts.mem, 0, 1 << 20))

    def sent_and_read(data: bytes) -> None:
        c.sock.sendall(data)
        deadline = time.monotonic() + 2.0
        while _unread(c.sock):
            assert time.monotonic() < deadline, "the server stopped reading too early"
            time.sleep(0.005)

    # Two 1 MiB replies, not read: about 2 MiB less what the socket buffer holds, under 2 MiB.
    sent_and_read(big)
    sent_and_read(big)
    # The third goes over, and the first 20 bytes of a next request come in the same send().
    c.sock.sendall(big + big[:20])
    assert not hung_up(c.sock, 0.8), "its clock ran while the server did not read"
    for _ in range(3):
        assert len(c.receive().payload) == 16 + (1 << 20)
    assert hung_up(c.sock, 1.5), "a message begun while the queue was full held the server"
    [message] = [m for m in warnings() if "closed the client" in m]
    assert message.endswith("message left incomplete for 0.5 s (20 bytes of it arrived)")
    c.close()
    assert next_client_served(socket_path, 2.0) < 2.0
