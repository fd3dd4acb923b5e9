"""A vfio-user socket server: one client at a time, one ``ServerEngine`` per client.

The server thread owns the socket and the engine; the device may raise interrupts
from any thread (the engine's IRQ table is locked).  A second client that connects
while one is attached is accepted and closed at once (it reads end-of-file, never
hangs).  When a client goes away its DMA windows and eventfds are dropped, the
device keeps its state, and the next client is accepted.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from ..interface import ServedDevice
from .engine import ServerEngine, State
from .events import Disconnected, Negotiated, PeerReply
from .wire import DMA_ACCESS
from .transport import TooManyFds, listen_unix, recv_with_fds, send_with_fds, set_io_timeout

log = logging.getLogger("hugepfn.vfio_user")

SEND_TIMEOUT = 10.0   # a client that stops reading its replies is dropped, not waited for


class VfioUserServer:
    backend_name = "python"

    def __init__(self, device: ServedDevice, socket_path: str | os.PathLike,
                 listener: socket.socket | None = None, **engine_options):
        """``listener``: a socket already listening (a manager's, `hugepfn serve --fd`); the
        server then serves it as it is and neither creates nor removes ``socket_path``."""
        self.device = device
        self.socket_path = Path(socket_path)
        self.engine_options = engine_options
        self._owns_socket_file = listener is None
        self.engine: ServerEngine | None = None      # the current client's engine
        self.clients_served = 0
        self.clients_refused = 0
        self.event_log: deque = deque(maxlen=1000)   # recent events, for status and tests
        self._listener: socket.socket | None = listener
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._jobs: deque = deque()                  # callables the server thread runs for others
        self._waiting: dict[int, Future] = {}        # our DMA_READ/WRITE msg_id -> its result
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    def listen(self) -> None:
        if self._listener is None:
            self._listener = listen_unix(self.socket_path)

    def start(self) -> "VfioUserServer":
        """Listen now and serve in a background thread."""
        self.listen()
        self._thread = threading.Thread(target=self._serve, name=f"vfio-user {self.socket_path.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until close() or, in the main thread, SIGTERM/SIGINT."""
        self.listen()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM,):
                previous[signum] = signal.signal(signum, lambda *_: self._request_stop())
        try:
            self._serve()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._teardown()

    def close(self) -> None:
        self._request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._teardown()

    def _request_stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

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
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- serving
    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                self._drain_wake()
                self._run_jobs(None, None)
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
        conn.setblocking(True)
        set_io_timeout(conn, SEND_TIMEOUT)
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        cfd, lfd = conn.fileno(), self._listener.fileno()
        reason = "server stopped"
        try:
            while engine.state is not State.CLOSED:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop.is_set():
                    break
                if self._wake_r in ready:
                    self._drain_wake()
                    self._run_jobs(conn, engine)
                # The current client first: if it just hung up, the connection
                # waiting on the listener is the next client, not a second one.
                if cfd in ready:
                    self._receive(conn, engine)
                if lfd in ready and not self._client_gone(conn, engine):
                    self._refuse()
        except OSError as exc:      # a send failed or timed out: drop the client
            reason = f"send failed: {exc}"
        finally:
            engine.connection_lost(reason)
            self._record(engine.events())
            self._fail_waiting(ConnectionResetError(errno.ENOTCONN, "client disconnected"))
            self.device.set_interrupt_sink(None)
            conn.close()

    def _receive(self, conn: socket.socket, engine: ServerEngine) -> None:
        try:
            data, fds = recv_with_fds(conn, engine.next_read_size(), engine.max_msg_fds)
        except TooManyFds as exc:
            engine.connection_lost(str(exc))
            return
        except OSError as exc:
            engine.connection_lost(f"receive failed: {exc}")
            return
        engine.receive_data(data, fds)
        # The rest of a message normally came with its header (one sendmsg): take it
        # now without going back to poll(), but never wait for it here.
        while engine.assembling and engine.state is not State.CLOSED:
            try:
                chunk = conn.recv(engine.next_read_size(), socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                engine.connection_lost(f"receive failed: {exc}")
                break
            engine.receive_data(chunk)
        for out, out_fds in engine.data_to_send():
            send_with_fds(conn, out, out_fds)
        self._record(engine.events())

    def _client_gone(self, conn: socket.socket, engine: ServerEngine) -> bool:
        """Before refusing a newcomer, read whatever the current client has already
        sent: if that ends in its hang-up, the newcomer is simply the next client."""
        probe = select.poll()
        probe.register(conn, select.POLLIN)
        while engine.state is not State.CLOSED and probe.poll(0):
            self._receive(conn, engine)
        return engine.state is State.CLOSED

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

        def job(conn, engine):
            if engine is None or engine.state is not State.READY:
                future.set_exception(OSError(errno.ENOTCONN, "no client attached"))
                return
            try:
                msg_id = make_request(engine)
            except Exception as exc:
                future.set_exception(OSError(errno.EINVAL, str(exc)))
                return
            self._waiting[msg_id] = future
            for out, out_fds in engine.data_to_send():
                send_with_fds(conn, out, out_fds)

        self._jobs.append(job)
        os.write(self._wake_w, b"j")
        reply = future.result(timeout)
        if reply.error_no:
            raise OSError(reply.error_no, f"client answered DMA with {os.strerror(reply.error_no)}")
        return reply

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_jobs(self, conn, engine) -> None:
        while self._jobs:
            self._jobs.popleft()(conn, engine)

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
