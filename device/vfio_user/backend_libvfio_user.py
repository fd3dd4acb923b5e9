"""Backend ``libvfio-user``: serve a ``ServedDevice`` through libvfio-user, bound with cffi.

Its parts, by concern: finding and vetting the shared library (libvfio_user_library), the device
as the library sees it — context, regions, IRQs, DMA callbacks (libvfio_user_device), the guard
around the library's blocking I/O — limits, large writes, a second client (libvfio_user_guard),
and here the Server: the owner loop around the library and its lifecycle.

Threading: a libvfio-user context is not thread-safe, so exactly one *owner* thread touches it
(hugepfn.device.vfio_user.server_loop).  That thread polls the context's fd (the listening
socket until a client attaches, the connection after), a wake-up eventfd and, while a client is
attached, the listening socket again so that a second client is refused at once instead of
hanging in the backlog.  Other threads never call into the library: interrupts raised by the
device and DMA accessors are queued and the eventfd wakes the owner, which runs them.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import select
import socket
import threading
import time

from hugepfn.device.interface import ServedDevice
from hugepfn.device.vfio_user.libvfio_user_device import (DeviceContext, DmaRegion, UnsupportedDevice,
                                                          _prepare_socket_path)
from hugepfn.device.vfio_user.libvfio_user_guard import (ATTACH_TIMEOUT_S, IO_TIMEOUT_S, PARTIAL_POLL_S,
                                                         ClientGuard, _shutdown_fd)
from hugepfn.device.vfio_user.libvfio_user_library import (ENV_LIBRARY, LibvfioUserUnavailable, _find_and_vet,
                                                           ffi, is_available, library)
from hugepfn.device.vfio_user.limits import ConnectionLimits
from hugepfn.device.vfio_user.server_loop import ServerLoop

log = logging.getLogger(__name__)

__all__ = ["ENV_LIBRARY", "DmaRegion", "LibvfioUserUnavailable", "Server", "UnsupportedDevice", "_find_and_vet",
           "is_available"]


class Server(ServerLoop, DeviceContext, ClientGuard):
    """libvfio-user serving one device on one UNIX socket, one client at a time: the owner loop
    (ServerLoop) around the library, the context it answers for (DeviceContext), the guard
    around its blocking I/O (ClientGuard)."""

    backend_name = "libvfio-user"

    def __init__(self, device: ServedDevice, socket_path: str | os.PathLike,
                 limits: ConnectionLimits | None = None):
        self._lib = lib = library()
        super().__init__()
        self.device = device
        self.socket_path = os.fspath(socket_path)
        self.limits = limits or ConnectionLimits(recv_timeout=IO_TIMEOUT_S, negotiate_timeout=ATTACH_TIMEOUT_S)
        self.stats = collections.Counter()
        self._last_input = 0.0          # monotonic time of the current client's last message
        self._stalled_since: float | None = None   # its replies have not been read since
        self._partial_since: float | None = None   # part of its next message arrived then
        self._keep: list = []           # cffi callbacks and buffers the library points to
        self._region_fds: list[int] = []
        self._region_sizes: dict[int, int] = {}
        self._conn: socket.socket | None = None   # our dup of the library's connection fd
        self._dma: dict[int, tuple[DmaRegion, int]] = {}   # iova -> (region, vaddr)
        self._dma_lock = threading.Lock()
        self._irq_queue: collections.deque[tuple[int, int]] = collections.deque()
        self._pending_irqs: set[tuple[int, int]] = set()   # raised while undeliverable
        self._masked_irqs: set[tuple[int, int]] = set()    # masked by SET_IRQS MASK
        self._loop_exited: threading.Event | None = None   # set when the owner loop has returned
        self._teardown_on_exit = False
        self._attach_lock = threading.Lock()
        self._attaching = False
        self._callback_exit: BaseException | None = None
        self._attached = False

        self._ctx = ffi.NULL
        try:
            _prepare_socket_path(self.socket_path)
            self._ctx = self._create_context()
            self._listen_fd = lib.vfu_get_poll_fd(self._ctx)
            self._setup_log()
            self._setup_config_space()
            self._setup_regions()
            self._setup_irqs()
            self._setup_reset_and_dma()
            if lib.vfu_realize_ctx(self._ctx) != 0:
                self._raise_errno("vfu_realize_ctx")
        except BaseException:
            self._destroy()
            raise
        device.set_interrupt_sink(self._raise_interrupt)


    @property
    def attached(self) -> bool:
        """Whether a client is attached, as of the owner loop's last turn."""
        return self._attached

    def status(self) -> dict:
        """What the server holds now (VfioUserBackend.status): the library keeps the IRQ eventfds
        and the client's capabilities to itself, so those are not reported."""
        return {
            "backend": self.backend_name,
            "socket": self.socket_path,
            "attached": self._attached,
            "clients_served": self.stats["connections"],
            "clients_refused": self.stats["refused_clients"],
            "clients_dropped": self.stats["dropped_clients"],
            "dma_windows": [(r.iova, r.size, r.mapped) for r in self.dma_regions()],
        }

    # -- the owner loop --------------------------------------------------------------

    def _thread_name(self) -> str:
        return f"vfu:{self.socket_path}"

    def _prepare(self):
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "server is closed")
        if self._loop_exited is not None:
            raise RuntimeError("server already started")
        # Set before the loop runs so that a close() racing with start() waits for it.
        self._loop_exited = threading.Event()

    def _loop_finished(self):
        self._loop_exited.set()
        if self._teardown_on_exit:
            self._teardown()
        if self._callback_exit is not None:
            raise self._callback_exit

    def _loop(self):
        lib, ctx = self._lib, self._ctx
        poller, watched = None, None
        while not self._stop.is_set():
            conn = lib.vfu_get_poll_fd(ctx)  # changes on attach and on disconnect
            attached = self._attached = conn != self._listen_fd
            want = (conn, attached)
            if want != watched:
                self._track_connection(conn if attached else None)
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                poller.register(conn, select.POLLIN | select.POLLRDHUP)
                if attached:  # to refuse a second client at once
                    poller.register(self._listen_fd, select.POLLIN)
                watched = want
            stalled = waiting = False
            timeout = None
            if attached and self._conn is not None:
                stalled = self._output_stalled()
                waiting = self._partial_since is not None
                # Stalled: wait for room to reply.  Waiting for the rest of a message:
                # look again every PARTIAL_POLL_S (its first part keeps POLLIN set).
                mask = select.POLLOUT if stalled else 0 if waiting else select.POLLIN
                poller.modify(conn, mask | select.POLLRDHUP)
                timeout = self._check_client_limits(time.monotonic())
                if waiting:
                    timeout = PARTIAL_POLL_S if timeout is None else min(timeout, PARTIAL_POLL_S)
            ready = dict(poller.poll(None if timeout is None else timeout * 1000 + 1))
            if self._wake_r in ready:
                self._on_wake()
            gone = bool(ready.get(conn, 0) & (select.POLLHUP | select.POLLERR | select.POLLRDHUP))
            if self._stop.is_set():
                continue
            if not attached:
                if conn in ready:
                    self._attach()
            elif (conn in ready or waiting) and (not stalled or gone):
                self._serve_messages(peer_gone=gone)
            if attached and self._listen_fd in ready and not self._stop.is_set():
                # A client that connects right after the current one hung up must wait
                # for the library to see that hang-up, not be refused.
                hung_up = ready.get(conn, 0) & (select.POLLHUP | select.POLLRDHUP)
                if not hung_up and lib.vfu_get_poll_fd(ctx) == conn:
                    self._refuse_extra_client()

    def _on_wake(self):
        self._drain_wake()
        while self._irq_queue:
            self._deliver(*self._irq_queue.popleft())
        self._run_jobs()

    def _attach(self):
        with self._attach_lock:
            self._attaching = True
        watchdog = threading.Timer(self.limits.negotiate_timeout, self._abort_attach)
        watchdog.daemon = True
        watchdog.start()
        try:
            rc = self._lib.vfu_attach_ctx(self._ctx)
            err = ffi.errno
        finally:
            watchdog.cancel()
            with self._attach_lock:
                self._attaching = False
        if rc == 0:
            self.stats["connections"] += 1
            self._last_input = time.monotonic()
            self._stalled_since = self._partial_since = None
            log.info("vfio-user: client attached on %s (libvfio-user negotiated the version)", self.socket_path)
        elif err not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.stats["failed_attaches"] += 1
            log.info("vfio-user: client failed to negotiate: %s", os.strerror(err))

    def _abort_attach(self):
        """Unblock a VERSION negotiation with a client that never sends it."""
        with self._attach_lock:
            if not self._attaching:
                return
            conn = self._lib.vfu_get_poll_fd(self._ctx)  # a plain field read in the library
            if conn != self._listen_fd:
                _shutdown_fd(conn)

    def _serve_messages(self, peer_gone: bool = False):
        conn = self._conn
        head = None if conn is None else self._peek(conn)      # one peek for both checks
        if conn is not None and not peer_gone and not self._message_complete(conn, head):
            if self._partial_since is None:
                self._partial_since = time.monotonic()
            return
        self._partial_since = None
        self._last_input = time.monotonic()
        if head and self._serve_large_write(conn, head):
            return
        # With ATTACH_NB one call handles at most one message; pipelined ones keep
        # the fd readable, so the next poll() returns at once for them.
        handled = self._lib.vfu_run_ctx(self._ctx)
        if handled > 0:
            self.stats["messages"] += handled
        elif handled < 0:
            err = ffi.errno
            if err == errno.ENOTCONN:
                log.info("vfio-user: client gone: disconnected from %s", self.socket_path)
            elif err not in (errno.EAGAIN, errno.EBUSY):
                self.stats["run_errors"] += 1
                log.debug("vfu_run_ctx: %s", os.strerror(err))

    def close(self) -> None:
        """Stop serving, destroy the context (which removes the socket file)."""
        if self._closed:
            return
        self._request_stop()
        self._abort_attach()
        if self._loop_exited is not None and not self._loop_exited.is_set():
            if self._owner == threading.get_ident():
                # Called from a callback: the loop tears down once the library returns.
                self._teardown_on_exit = True
                return
            if not self._loop_exited.wait(self.limits.negotiate_timeout + 2 * self.limits.recv_timeout):
                # Destroying the context under a running call would be a use-after-free.
                raise OSError(errno.EBUSY, "libvfio-user owner thread did not stop; context leaked")
        self._teardown()

    def _teardown(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.device.set_interrupt_sink(None)
        finally:
            self._destroy()

    def _destroy(self):
        self._track_connection(None)
        if self._ctx != ffi.NULL:
            self._lib.vfu_destroy_ctx(self._ctx)  # also unlinks the socket
            self._ctx = ffi.NULL
        for fd in self._region_fds:
            os.close(fd)
        self._region_fds.clear()
        self._keep.clear()
        self._close_wake()
