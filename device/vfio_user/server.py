"""A vfio-user socket server: one client at a time, one ``ServerEngine`` per client.

The server thread owns the socket and the engine; the device may raise interrupts
from any thread (the engine's IRQ table is locked).  A second client that connects
while one is attached is accepted and closed at once (it reads end-of-file, never
hangs).  When a client goes away its DMA windows and eventfds are dropped, the
device keeps its state, and the next client is accepted.

No client can hold the server (``limits.ConnectionLimits``): the connection is
non-blocking, replies wait in a bounded per-client queue (above the bound the
client's requests are no longer read, and a client that stays above it is closed),
a message left half sent, a VERSION that never comes and, when configured, silence
close the client.  Every such close is logged with its reason.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from hugepfn.abi.vfio_user import DMA_ACCESS, HEADER, HEADER_SIZE, REGION_ACCESS

from ..interface import ServedDevice
from .engine import ServerEngine, State
from .events import Disconnected, Negotiated, PeerReply
from .limits import ConnectionLimits
from .server_loop import ServerLoop
from .transport import CTRUNC, DONTWAIT, SEND_FLAGS, cmsg_space, fds_of, listen_unix, recv_flags, recvmsg_fds, send_some

log = logging.getLogger("hugepfn.vfio_user")

_HANGUP = select.POLLHUP | select.POLLRDHUP | select.POLLERR
_POLLIN, _POLLOUT, _POLLRDHUP = select.POLLIN, select.POLLOUT, select.POLLRDHUP

# The first read of a message asks for _FIRST_READ bytes, so that a trapped access costs one
# recvmsg(), not a header and then its rest (in a VM every system call is a world switch).  A
# client that waits for each answer (a vCPU) has one message queued and the read returns it,
# whatever its size up to _FIRST_READ.  A client that sends before its answers came (posted
# writes, several vCPUs) may have more queued: the read then brings the start of the next
# message too, or a whole one and more, and every whole one is answered.  (Asking for as many
# bytes as the previous message had avoids that glue but reads each message longer than its
# predecessor in two, as an 8-byte REGION_WRITE after a REGION_READ: more system calls for
# a vCPU's mix of reads and writes.)  Fds stay exact because unix_stream_read_generic ends a
# read with the bytes of the sendmsg() that carried them: they belong to the message the read
# ended in (Framer.receive_read).  _FIRST_READ is less than two REGION_READ requests, so a
# read holds at most one request whose reply may be max_data_xfer_size long and the reply
# queue goes over max_output by at most one such reply, as when each message was read alone.
# Every REGION_READ, a REGION_WRITE of up to 31 bytes, DMA_MAP, DMA_UNMAP and DEVICE_SET_IRQS
# with eventfds fit; a longer message is read in two (what arrived, then the rest).
_FIRST_READ = 2 * (HEADER_SIZE + REGION_ACCESS.size) - 1


class _Connection:
    """One client's socket, its engine, its reply queue and its clocks."""

    def __init__(self, conn: socket.socket, engine: ServerEngine, limits: ConnectionLimits):
        self.sock = conn
        self.engine = engine
        self.limits = limits
        self.queue: deque[list] = deque()     # [memoryview, fds] per message, fds on its first byte
        self.queued = 0                        # bytes in the queue
        now = time.monotonic()
        self.connected_at = now
        self.last_input = now                  # for the idle limit
        self.partial_since: float | None = None
        self.over_since: float | None = None   # when the queue went over max_output
        self.close_reason: str | None = None
        self._cmsg_space = cmsg_space(engine.max_msg_fds)
        self._recv_flags = recv_flags(DONTWAIT)

    # -- replies -------------------------------------------------------------------
    def queue_replies(self) -> None:
        for data, fds in self.engine.data_to_send():
            self.queue.append([memoryview(data), fds])
            self.queued += len(data)

    def send_replies(self) -> None:
        """The engine's replies: sent now if the socket takes them, the rest queued.  One
        reply and nothing queued (a trapped access) is sent straight away, with the queue's
        accounting untouched when it all goes (the queue stays empty: nothing to account)."""
        out = self.engine.data_to_send()
        if len(out) == 1 and not self.queue:
            data, fds = out[0]
            try:
                sent = self.sock.send(data, SEND_FLAGS) if not fds else send_some(self.sock, data, fds)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.fail(f"send failed: {exc.strerror or exc}")
                return
            if sent == len(data):
                return
            self.queue.append([memoryview(data)[sent:], () if sent else fds])
            self.queued += len(data) - sent
        else:
            for data, fds in out:
                self.queue.append([memoryview(data), fds])
                self.queued += len(data)
        self.flush()

    def flush(self) -> None:
        """Send what the socket takes now; never waits."""
        while self.queue:
            entry = self.queue[0]
            view, fds = entry
            try:
                sent = send_some(self.sock, view, fds)
            except OSError as exc:
                self.fail(f"send failed: {exc.strerror or exc}")
                return
            if not sent:
                break
            self.queued -= sent
            if sent < len(view):
                entry[0], entry[1] = view[sent:], ()     # the fds went with the first part
                break
            self.queue.popleft()
        if self.queued < self.limits.max_output:
            if self.over_since is not None and self.partial_since is not None:
                self.partial_since = time.monotonic()     # its clock stopped while we did not read
            self.over_since = None
        elif self.over_since is None:
            self.over_since = time.monotonic()

    @property
    def reading(self) -> bool:
        """Requests are read only while the replies the client has not taken fit."""
        return self.over_since is None

    # -- requests ------------------------------------------------------------------
    def receive(self) -> None:
        """Read and handle what has arrived; never waits.  One read from a message's start
        (it holds that message, or a few small ones the client sent together), then as much
        as is there of a message it left incomplete.  The poll loop comes back at once for
        more (a poll() costs less than a read that finds nothing), and the listener and the
        wake pipe are looked at between any two wake-ups."""
        engine = self.engine
        if not engine.assembling:
            got = self._receive_whole()
            if not got or engine.state is State.CLOSED:
                return
            if got > engine.assembled_bytes:          # one or more whole messages: answer them
                self._received()
                if not engine.assembling:
                    return
                self.partial_since = time.monotonic()     # the next message began in this read
                if not self.reading:
                    return        # over max_output: its rest waits, its clock stopped (see flush)
        self._receive_rest()

    def _receive_whole(self) -> int:
        """A message from its start, with one recvmsg() of up to _FIRST_READ bytes: exactly
        one message without fds (a trapped access, nearly always) goes to the engine whole;
        anything else the general way, and a message left incomplete is read on by
        _receive_rest.  The bytes read (0: nothing arrived, or the connection is gone)."""
        engine = self.engine
        try:
            data, anc, msg_flags, _ = self.sock.recvmsg(_FIRST_READ, self._cmsg_space, self._recv_flags)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.fail(f"receive failed: {exc.strerror or exc}")
            return 0
        got = len(data)
        if not anc and not msg_flags & CTRUNC and got >= HEADER_SIZE and HEADER.unpack_from(data)[2] == got:
            engine.receive_message(data[:HEADER_SIZE], data[HEADER_SIZE:])
        else:   # part of a message, more than one, fds (the message the read ended in has them), end of stream
            engine.receive_read(data, *fds_of(anc, msg_flags))
        return got

    def _receive_rest(self) -> None:
        """The rest of the message being assembled, as far as it has arrived."""
        engine, sock = self.engine, self.sock
        # Up to the end of the message being assembled and no further: the fds of
        # each recvmsg() then belong to exactly one message.
        while engine.assembling:
            if self.partial_since is None:
                self.partial_since = time.monotonic()
            try:
                data, fds, lost = recvmsg_fds(sock, engine.next_read_size(), engine.max_msg_fds, DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(f"receive failed: {exc.strerror or exc}")
                return
            engine.receive_data(data, fds, lost)
            if engine.state is State.CLOSED:
                return
        self._received()

    def _received(self) -> None:
        """A whole message was handled: its clocks stop, its replies go out."""
        self.partial_since = None
        if self.limits.idle_limit is not None:
            self.last_input = time.monotonic()
        self.send_replies()

    def fail(self, reason: str) -> None:
        """Close this client for ``reason`` (logged through the engine's Disconnected)."""
        if self.close_reason is None:
            self.close_reason = reason
        self.engine.connection_lost(reason)

    # -- clocks --------------------------------------------------------------------
    def check_clocks(self, now: float) -> float | None:
        """Close the client if one of its bounds has passed; else seconds to the next one
        (None: no bound runs, the common case of a negotiated client that reads)."""
        limits, engine = self.limits, self.engine
        if (self.partial_since is None and self.over_since is None and engine.state is State.READY
                and limits.idle_limit is None):
            return None
        upcoming = []        # (when, reason made only if it is due)
        if self.partial_since is not None and self.reading:
            upcoming.append((self.partial_since + limits.recv_timeout,
                             lambda: f"message left incomplete for {limits.recv_timeout:g} s "
                                     f"({engine.assembled_bytes} bytes of it arrived)"))
        if engine.state is State.AWAIT_VERSION:
            upcoming.append((self.connected_at + limits.negotiate_timeout,
                             lambda: f"no VERSION within {limits.negotiate_timeout:g} s of connecting"))
        if self.over_since is not None:
            upcoming.append((self.over_since + limits.send_timeout,
                             lambda: f"not reading its replies: {self.queued} bytes queued, over the "
                                     f"{limits.max_output} byte limit for {limits.send_timeout:g} s"))
        if limits.idle_limit is not None and engine.state is State.READY:
            upcoming.append((self.last_input + limits.idle_limit,
                             lambda: f"idle for {limits.idle_limit:g} s (idle limit)"))
        for when, reason in upcoming:
            if now >= when:
                self.fail(reason())
                return 0.0
        return min((when for when, _ in upcoming), default=None)


class VfioUserServer(ServerLoop):
    backend_name = "python"

    def __init__(self, device: ServedDevice, socket_path: str | os.PathLike,
                 listener: socket.socket | None = None, limits: ConnectionLimits | None = None,
                 **engine_options):
        """``listener``: a socket already listening (a manager's, `hugepfn serve --fd`); the
        server then serves it as it is and neither creates nor removes ``socket_path``.
        ``limits``: how long and how much one client may hold the server."""
        super().__init__()
        self.device = device
        self.socket_path = Path(socket_path)
        self.limits = limits or ConnectionLimits()
        self.engine_options = engine_options
        self._owns_socket_file = listener is None
        self.engine: ServerEngine | None = None      # the current client's engine
        self.clients_served = 0
        self.clients_refused = 0
        self.clients_dropped = 0                     # closed by the server for going over a limit
        self.event_log: deque = deque(maxlen=1000)   # recent events, for status and tests
        self._listener: socket.socket | None = listener
        self._waiting: dict[int, Future] = {}        # our DMA_READ/WRITE msg_id -> its result

    # ------------------------------------------------------------ lifecycle
    def listen(self) -> None:
        if self._listener is None:
            self._listener = listen_unix(self.socket_path)

    _prepare = listen

    def _thread_name(self) -> str:
        return f"vfio-user {self.socket_path.name}"

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.close()
            if self._owns_socket_file:
                try:
                    self.socket_path.unlink()
                except FileNotFoundError:
                    pass
        self._close_wake()

    def __enter__(self):
        return self.start()

    # -------------------------------------------------------------- serving
    def _loop(self) -> None:
        """Accept a client and serve it until it goes; then the next."""
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                self._drain_wake()
                self._run_jobs(None)
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self._serve_client(conn)

    def _serve_client(self, conn: socket.socket) -> None:
        engine = ServerEngine(self.device, **self.engine_options)
        self.engine = engine
        self.clients_served += 1
        self.device.set_interrupt_sink(engine.interrupt_sink)
        conn.setblocking(False)
        client = _Connection(conn, engine, self.limits)
        cfd, lfd = conn.fileno(), self._listener.fileno()
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        registered = None
        stop, ready_state, idle_limit = self._stop, State.READY, self.limits.idle_limit
        try:
            while engine.state is not State.CLOSED and not stop.is_set():
                want = (_POLLIN if client.over_since is None else 0) | _POLLRDHUP
                if client.queue:
                    want |= _POLLOUT
                if want != registered:
                    poller.register(conn, want)       # re-registering modifies the mask
                    registered = want
                if (client.partial_since is None and client.over_since is None and engine.state is ready_state
                        and idle_limit is None):
                    timeout = -1                      # no bound runs (check_clocks' common case)
                else:
                    next_deadline = client.check_clocks(time.monotonic())
                    if engine.state is State.CLOSED:
                        break
                    timeout = -1 if next_deadline is None else max(0, next_deadline - time.monotonic()) * 1000 + 1
                polled = poller.poll(timeout)
                if stop.is_set():
                    break
                if len(polled) == 1 and polled[0][0] == cfd:   # the common case: the client alone
                    ready, events = (), polled[0][1]
                else:
                    ready = dict(polled)
                    if self._wake_r in ready:
                        self._drain_wake()
                        self._run_jobs(client)
                    events = ready.get(cfd, 0)
                if events & _POLLOUT:
                    client.flush()
                # The current client first: if it just hung up, the connection
                # waiting on the listener is the next client, not a second one.
                if events & (_POLLIN | _HANGUP):
                    if client.reading:
                        client.receive()           # reads what is left, then the end of stream
                    else:
                        engine.connection_lost("peer closed the connection")
                if lfd in ready and not events & _HANGUP and engine.state is not State.CLOSED:
                    self._refuse()
                if engine._events:                 # (events() copies the engine's queue)
                    self._record(engine.events())
        finally:
            if engine.state is not State.CLOSED:
                engine.connection_lost("server stopped")
            client.queue_replies()
            client.flush()                      # a last answer (an EINVAL before closing) if it fits
            if client.close_reason:
                self.clients_dropped += 1
                log.warning("vfio-user: closed the client on %s: %s", self.socket_path, client.close_reason)
            self._record(engine.events())
            self._fail_waiting(ConnectionResetError(errno.ENOTCONN, "client disconnected"))
            self.device.set_interrupt_sink(None)
            conn.close()

    # ------------------------------------------------------------- status
    @property
    def attached(self) -> bool:
        engine = self.engine
        return engine is not None and engine.state is State.READY

    def status(self) -> dict:
        """What the server holds now (for `hugepfn status` and tests)."""
        engine = self.engine if self.attached else None
        wired = []
        if engine is not None:
            for index, irq in engine.irqs.indexes.items():
                for vector, state in enumerate(irq.vectors):
                    if state.eventfd is not None:
                        wired.append((index, vector))
        return {
            "backend": self.backend_name,
            "socket": str(self.socket_path),
            "attached": engine is not None,
            "clients_served": self.clients_served,
            "clients_refused": self.clients_refused,
            "clients_dropped": self.clients_dropped,
            "dma_windows": [(r.address, r.size, r.mapping is not None) for r in engine.dma.regions()]
            if engine is not None else [],
            "irq_eventfds": wired,
            "client_capabilities": dict(engine.client_limits.extra, max_msg_fds=engine.client_limits.max_msg_fds,
                                        max_data_xfer_size=engine.client_limits.max_data_xfer_size)
            if engine is not None else {},
        }

    # ------------------------------------------------- device-side DMA (any thread)
    def dma_read(self, iova: int, size: int, timeout: float = 10.0) -> bytes:
        """The device reads guest memory: straight from an mmap'ed window, or with a
        DMA_READ message to the client for a window mapped without an fd."""
        engine = self._current_engine()
        region, _ = engine.dma.lookup(iova, size)
        if region.mapping is not None:
            return engine.dma.read(iova, size)
        reply = self._ask_client(lambda e: e.send_dma_read(iova, size), timeout)
        data = reply.payload[DMA_ACCESS.size:]
        if len(data) != size:
            raise OSError(errno.EIO, f"DMA_READ reply carried {len(data)} of {size} bytes")
        return data

    def dma_write(self, iova: int, data: bytes, timeout: float = 10.0) -> None:
        engine = self._current_engine()
        region, _ = engine.dma.lookup(iova, len(data))
        if region.mapping is not None:
            engine.dma.write(iova, data)
            return
        self._ask_client(lambda e: e.send_dma_write(iova, data), timeout)

    def _current_engine(self) -> ServerEngine:
        engine = self.engine
        if engine is None or engine.state is not State.READY:
            raise OSError(errno.ENOTCONN, "no client attached")
        return engine

    def _ask_client(self, make_request, timeout: float) -> PeerReply:
        future: Future = Future()

        def job(client: _Connection | None):
            engine = client.engine if client is not None else None
            if engine is None or engine.state is not State.READY:
                future.set_exception(OSError(errno.ENOTCONN, "no client attached"))
                return
            try:
                msg_id = make_request(engine)
            except Exception as exc:
                future.set_exception(OSError(errno.EINVAL, str(exc)))
                return
            self._waiting[msg_id] = future
            client.queue_replies()
            client.flush()

        self._post(job)
        reply = future.result(timeout)
        if reply.error_no:
            raise OSError(reply.error_no, f"client answered DMA with {os.strerror(reply.error_no)}")
        return reply

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(exc)

    def _refuse(self) -> None:
        """A second client while one is attached: accept and close it at once."""
        try:
            extra, _ = self._listener.accept()
        except OSError:
            return
        extra.close()
        self.clients_refused += 1
        log.info("vfio-user: refused a second client on %s (one client at a time)", self.socket_path)

    def _record(self, events: list) -> None:
        for event in events:
            self.event_log.append(event)
            if isinstance(event, PeerReply):
                future = self._waiting.pop(event.msg_id, None)
                if future is not None:
                    future.set_result(event)
            if isinstance(event, Negotiated):
                log.info("vfio-user: client negotiated %d.%d caps=%s", event.major, event.minor,
                         event.reply_capabilities)
            elif isinstance(event, Disconnected):
                log.info("vfio-user: client gone: %s", event.reason)
            # (a CommandFailed was logged by the engine, with its errno name, when it failed)
