"""No client holds the libvfio-user backend: what the Server does around the library's blocking
I/O (``ClientGuard``, a part of the backend's Server).

The library reads a header without waiting and a body with one blocking recv(), negotiates
VERSION and sends each reply blocking.  So the Server keeps a dup of the connection with I/O
timeouts, hands the library a message only once it has arrived whole, holds requests back while
the client leaves its replies unread, answers REGION_WRITEs too large for one socket buffer
itself (with the one framer, hugepfn.device.vfio_user.framing), refuses a second client at once
and hangs up on a client over a limit (hugepfn.device.vfio_user.limits), with the reason logged.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import time

from hugepfn.abi.vfio_user import (FLAG_ERROR, FLAG_NO_REPLY, HEADER, MSG_TYPE_MASK, MSG_TYPE_REPLY,
                                    REGION_ACCESS, Command)
from hugepfn.device.vfio_user.framing import MessageReader, close_fds
from hugepfn.device.vfio_user.libvfio_user_device import _errno_of

log = logging.getLogger("hugepfn.device.vfio_user.backend_libvfio_user")

# A stalled peer must not pin the owner thread inside a blocking library call:
# the library reads a message body and negotiates VERSION with blocking I/O.
# These are the defaults of ConnectionLimits.recv_timeout and .negotiate_timeout.
IO_TIMEOUT_S = 2.0
ATTACH_TIMEOUT_S = 5.0
# The library sends a reply with one blocking sendmsg(); a client that does not read
# makes it wait for this long at most (then the reply is cut and the client dropped).
SEND_BLOCK_S = 0.5

# libvfio-user reads a message body with one recv() without MSG_WAITALL, so a body
# larger than what one socket write queues (~200 KiB with default buffers) is a
# "short read": EINVAL, then the rest of the body is parsed as headers.  Only
# REGION_WRITE brings such bodies from a client; above this size the backend
# reads and answers it itself, in the owner thread, while the library is idle.
BYPASS_WRITE_BODY = 64 << 10
_PEEK_BYTES = 4096            # _message_complete: a message this small is seen whole in one peek
_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)    # (an int: OR-ing the IntFlags costs 3 us)
_REGION_WRITE = int(Command.REGION_WRITE)                    # (an int: compared once per message)
LIBRARY_MAX_DATA_XFER = 1 << 20  # what the library advertises as max_data_xfer_size
LIBRARY_MAX_MSG = LIBRARY_MAX_DATA_XFER + 32    # SERVER_MAX_MSG_SIZE: larger headers get EINVAL
LARGE_WRITE_MAX = HEADER.size + REGION_ACCESS.size + LIBRARY_MAX_DATA_XFER
PARTIAL_POLL_S = 0.01            # how often the rest of a partly arrived message is looked for


class ClientGuard:
    """The current client's connection as the Server watches it: ``_conn`` (our dup of the
    library's fd), its clocks (``_last_input``, ``_stalled_since``, ``_partial_since``)."""

    def _track_connection(self, fd: int | None):
        """Keep a dup of the attached connection (closed as soon as the library drops it,
        so the client sees EOF) with I/O timeouts that also bound the library's reads."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if fd is not None:
            self._conn = socket.socket(fileno=os.dup(fd))
            self._writable = select.poll()            # for _output_stalled, one per connection
            self._writable.register(self._conn, select.POLLOUT)
            self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.limits.recv_timeout))
            self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                  _timeval(min(SEND_BLOCK_S, self.limits.send_timeout / 3)))

    def _output_stalled(self) -> bool:
        """The client leaves its replies unread (our socket buffer is full): the
        library's next reply would block, so no request is handed to it."""
        if self._writable.poll(0):
            self._stalled_since = None
            return False
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
        return True

    def _check_client_limits(self, now: float) -> float | None:
        """Hang up on a client over a limit; else the seconds until the next limit."""
        limits = self.limits
        if self._stalled_since is None and self._partial_since is None and limits.idle_limit is None:
            return None                    # no limit runs: a client that reads and sends whole messages
        # SEND_BLOCK_S inside the library plus this wait stay within send_timeout.
        stall_limit = limits.send_timeout - min(SEND_BLOCK_S, limits.send_timeout / 3)
        deadlines = []
        if self._stalled_since is not None:
            deadlines.append((self._stalled_since + stall_limit,
                              f"not reading its replies for {limits.send_timeout:g} s"))
        if limits.idle_limit is not None:
            deadlines.append((self._last_input + limits.idle_limit, f"idle for {limits.idle_limit:g} s (idle limit)"))
        if self._partial_since is not None:
            deadlines.append((self._partial_since + limits.recv_timeout,
                              f"message left incomplete for {limits.recv_timeout:g} s "
                              f"({_bytes_waiting(self._conn)} bytes of it arrived)"))
        for when, reason in deadlines:
            if now >= when:
                self._drop_client(reason)
                self._last_input = now
                return 0.0
        return max(0.0, min(when for when, _ in deadlines) - now) if deadlines else None

    def _drop_client(self, reason: str) -> None:
        """Hang up on the current client; the library sees end-of-file on its next read."""
        if self._conn is None:
            return
        self.stats["dropped_clients"] += 1
        log.warning("vfio-user: closed the client on %s: %s", self.socket_path, reason)
        _hang_up(self._conn)
        self._stalled_since = self._partial_since = None

    def _message_complete(self, conn: socket.socket, head: bytes | None) -> bool:
        """Whether the next message has arrived whole, so that the library, which reads
        a header without waiting and a body with one recv(), never sees a part of one
        (it would drop the client, or take the rest of the body for the next header).
        ``head``: what _peek showed.  A REGION_WRITE the backend answers itself
        (BYPASS_WRITE_BODY) does not wait here: its body may be larger than the socket buffer."""
        if not head:
            return True                    # nothing there, end of stream or an error: the library handles it
        if len(head) < HEADER.size:
            return False
        _, cmd, size, flags, _ = HEADER.unpack_from(head)
        if size < HEADER.size or size > LIBRARY_MAX_MSG:
            return True                    # refused by the library from its header alone
        if cmd == _REGION_WRITE and not flags & MSG_TYPE_MASK and size - HEADER.size > BYPASS_WRITE_BODY:
            return True
        # A peek stops after the first part that carries fds: the bytes still to come are
        # counted by FIONREAD, which sees them all.
        return size <= len(head) or _bytes_waiting(conn) >= size

    @staticmethod
    def _peek(conn: socket.socket) -> bytes | None:
        """The next bytes waiting (up to _PEEK_BYTES, a small message whole), left in place;
        None when nothing is there or the connection failed."""
        try:
            return conn.recv(_PEEK_BYTES, _PEEK_FLAGS)
        except OSError:
            return None

    def _serve_large_write(self, conn: socket.socket, head: bytes) -> bool:
        """Answer a REGION_WRITE whose body the library would short-read (see
        BYPASS_WRITE_BODY); False leaves the next message to the library.  ``head``: what
        _peek showed of it."""
        if len(head) < HEADER.size:
            return False
        msg_id, cmd, size, flags, _ = HEADER.unpack_from(head)
        if cmd != _REGION_WRITE or flags & MSG_TYPE_MASK or size - HEADER.size <= BYPASS_WRITE_BODY:
            return False
        self.stats["large_writes"] += 1
        if size > LARGE_WRITE_MAX:
            _hang_up(conn)  # oversized: the library, too, gives up on such a client
            return True
        reader = MessageReader(conn, LARGE_WRITE_MAX, max_fds=1)
        try:
            _, _, _, _, payload, fds = reader.read(deadline=time.monotonic() + self.limits.recv_timeout)
        except (OSError, ValueError):   # a peer that stalls or leaves mid-message loses the connection
            self._drop_client(f"message left incomplete for {self.limits.recv_timeout:g} s "
                              f"({reader.assembled_bytes or reader.cut_short} bytes of it arrived)")
            return True
        close_fds(fds)                  # a REGION_WRITE brings none
        offset, region, count = REGION_ACCESS.unpack_from(payload)
        data = payload[REGION_ACCESS.size:]
        err = 0
        if count != len(data) or region not in self._region_sizes or \
                offset + count > self._region_sizes[region]:
            err = errno.EINVAL
        else:
            try:
                self.device.region_write(region, offset, data)
            except BaseException as exc:
                err = _errno_of(exc)
                self.stats["callback_errors"] += 1
        if flags & FLAG_NO_REPLY:
            return True
        if err:
            reply = HEADER.pack(msg_id, cmd, HEADER.size, MSG_TYPE_REPLY | FLAG_ERROR, err)
        else:
            reply = HEADER.pack(msg_id, cmd, HEADER.size + REGION_ACCESS.size, MSG_TYPE_REPLY, 0) + \
                REGION_ACCESS.pack(offset, region, count)
        try:
            conn.sendall(reply)
        except OSError:
            _hang_up(conn)
        return True

    def _refuse_extra_client(self):
        listener = socket.socket(fileno=os.dup(self._listen_fd))
        try:
            extra, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        finally:
            listener.close()
        self.stats["refused_clients"] += 1
        extra.close()  # the second client reads EOF at once


def _bytes_waiting(conn: socket.socket) -> int:
    """Bytes queued for reading on the connection (FIONREAD); 0 when it cannot tell."""
    try:
        return struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _timeval(seconds: float) -> bytes:
    return struct.pack("@ll", int(seconds), int(seconds % 1 * 1e6))


def _hang_up(conn: socket.socket) -> None:
    """End a connection the library still holds: shut it down (the peer can send
    no more) and discard what is queued, so the library's next read sees EOF."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
        while conn.recv(1 << 16, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass


def _shutdown_fd(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return   # the library closed it meanwhile: nothing left to unblock
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
