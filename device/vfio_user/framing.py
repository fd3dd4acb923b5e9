"""Cutting a vfio-user byte stream into messages: the one framer of the server engine, the host's
client and the libvfio-user backend's large-write path.

A message is a 16-byte header whose ``msg_size`` counts the whole message, then its payload; the
fds SCM_RIGHTS brought while a message was assembled belong to that message.  A ``msg_size``
below the header or above ``max_msg_size`` leaves the start of the next message unknowable: the
stream cannot be framed any further.

``Framer`` is sans-IO: bytes and fds in (``receive_data``; ``receive_message`` for a message the
transport read whole; ``receive_read`` for a read that may run past a message's end), one
``message_received`` call per whole message out.  The
engine is a Framer (so a message costs no call more than its handler); a ``MessageReader`` is the
Framer that reads messages off a blocking socket.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from collections import deque

from hugepfn.abi.vfio_user import HEADER, HEADER_SIZE

from .transport import CMSG_CLOEXEC, CTRUNC, TooManyFds, cmsg_space, fds_of, recvmsg_fds


class Unframeable(ValueError):
    """A header whose msg_size cannot be: where the next message starts is unknowable."""

    def __init__(self, msg_id: int, cmd: int, flags: int, size: int, max_msg_size: int):
        super().__init__(f"msg_size {size} outside {HEADER_SIZE}..{max_msg_size}")
        self.msg_id, self.cmd, self.flags, self.size = msg_id, cmd, flags, size


class Framer:
    """Assembles messages from stream chunks.  Subclasses implement ``message_received`` (one
    whole message: header fields, payload, the fds that came with it, whether fds were lost to
    MSG_CTRUNC), ``unframeable`` and ``connection_lost``; the last two end the stream: they
    set ``stream_ended`` and clear what is buffered (``reset_framing``)."""

    def __init__(self, max_msg_size: int):
        self.max_msg_size = max_msg_size
        self.stream_ended = False
        self._buf = bytearray()
        self._fds: list[int] = []                 # fds of the message being assembled
        self._fds_lost = False                    # the kernel dropped fds of this message (MSG_CTRUNC)

    # -- what the reader asks -------------------------------------------------------------
    @property
    def assembling(self) -> bool:
        """Part of a message has arrived and the rest has not."""
        return bool(self._buf)

    @property
    def assembled_bytes(self) -> int:
        """How much of the message being assembled has arrived."""
        return len(self._buf)

    def next_read_size(self) -> int:
        """Bytes still needed to complete the message being assembled (>= 1): reading no more
        than this keeps the fds of each recvmsg() with exactly one message."""
        have = len(self._buf)
        if have < HEADER_SIZE:
            return HEADER_SIZE - have
        size = HEADER.unpack_from(self._buf)[2]
        if HEADER_SIZE <= size <= self.max_msg_size and size > have:
            return size - have
        return HEADER_SIZE

    # -- feeding ----------------------------------------------------------------------------
    def receive_data(self, data: bytes, fds: list[int] | tuple[int, ...] = (), fds_lost: bool = False) -> None:
        """Feed bytes and the fds that came with them; b"" means end of stream.

        ``fds_lost``: the transport saw MSG_CTRUNC, the peer attached more fds than it
        had room for (the kernel closed the rest); the message those bytes belong to is
        handed on with ``fds_lost`` set.
        """
        if self.stream_ended:
            close_fds(fds)
            return
        if fds:
            self._fds.extend(fds)
        if fds_lost:
            self._fds_lost = True
        if not data:
            self.connection_lost("peer closed the connection")
            return
        buf = self._buf
        buf += data
        # A handler that ends the stream clears the buffer, which ends this loop.
        while len(buf) >= HEADER_SIZE:
            msg_id, cmd, size, flags, error_no = HEADER.unpack_from(buf)
            if size < HEADER_SIZE or size > self.max_msg_size:
                self.unframeable(Unframeable(msg_id, cmd, flags, size, self.max_msg_size))
                return
            if len(buf) < size:
                break
            payload = bytes(buf[HEADER_SIZE:size])
            del buf[:size]
            fds = self._fds
            if fds:
                self._fds = []
            fds_lost, self._fds_lost = self._fds_lost, False
            self.message_received(msg_id, cmd, flags, error_no, payload, fds, fds_lost)

    def receive_read(self, data: bytes, fds: list[int] | tuple[int, ...] = (), fds_lost: bool = False) -> None:
        """Feed what one recvmsg() returned when it may have read past the end of the message
        being assembled: its fds (and ``fds_lost``) go with the message its last byte belongs
        to.  Linux's unix_stream_read_generic (net/unix/af_unix.c) glues the bytes of several
        sendmsg() calls into one read, but stops as soon as it has taken bytes of one that
        carried fds and returns them with it; a peer sends a message's fds with bytes of that
        message (QEMU, libvfio-user and our client: on the sendmsg() that starts it), so the
        read that brings them ends in that message.  Whole messages before it are fed without
        fds, one ``next_read_size`` at a time; a read without fds is fed as it is."""
        if not fds and not fds_lost:
            self.receive_data(data)
            return
        while len(data) > self.next_read_size() and not self.stream_ended:
            need = self.next_read_size()
            self.receive_data(data[:need])
            data = data[need:]
        self.receive_data(data, fds, fds_lost)

    def receive_message(self, header: bytes, payload: bytes) -> None:
        """One whole message that came without fds, framed by the transport (its header, then
        exactly ``msg_size`` - 16 more bytes): handled as ``receive_data(header + payload)``
        would handle it, without assembling it in the buffer (a trapped access is one of these).
        Anything else, a message begun before or a size the bytes do not match, goes the
        general way."""
        if self._buf or self._fds or self._fds_lost or self.stream_ended:
            self.receive_data(header + payload)
            return
        msg_id, cmd, size, flags, error_no = HEADER.unpack(header)
        if size != HEADER_SIZE + len(payload) or size > self.max_msg_size:
            self.receive_data(header + payload)
        else:
            self.message_received(msg_id, cmd, flags, error_no, payload, [], False)

    def reset_framing(self) -> None:
        """End the stream: close the fds of the message being assembled, drop its bytes."""
        self.stream_ended = True
        close_fds(self._fds)
        self._fds = []
        self._fds_lost = False
        self._buf.clear()

    # -- what a subclass does -----------------------------------------------------------------
    def message_received(self, msg_id: int, cmd: int, flags: int, error_no: int, payload: bytes,
                         fds: list[int], fds_lost: bool) -> None:
        raise NotImplementedError

    def unframeable(self, error: Unframeable) -> None:
        raise NotImplementedError

    def connection_lost(self, reason: str = "connection lost") -> None:
        raise NotImplementedError


class MessageReader(Framer):
    """Reads whole messages off one blocking socket (the host's client, the libvfio-user backend's
    large writes).  One reader per socket, kept for its life: a message costs no object but its
    tuple.

    ``first_read`` 0 (the default): each message is read up to its end and no further, the
    header and then exactly its rest, for a socket that another reader shares (libvfio-user
    reads the next message of the guard's socket itself).  ``first_read`` n: a message is read
    from its start with one recvmsg() of up to n bytes, so that a reply that fits costs one
    system call, not two.  A read may then bring more than one message (a DMA request of the
    server and the reply after it): the messages wait in order for the next reads, and fds go
    with the message the read ended in (``Framer.receive_read``)."""

    def __init__(self, sock: socket.socket, max_msg_size: int, max_fds: int = 16, first_read: int = 0):
        super().__init__(max_msg_size)
        self.sock = sock
        self.max_fds = max_fds
        self.first_read = min(first_read, max_msg_size)
        self._messages: deque = deque()     # whole messages (or TooManyFds) not returned yet
        self._error: Exception | None = None
        self.cut_short = 0
        self._cmsg_space = cmsg_space(max_fds)

    def message_received(self, msg_id, cmd, flags, error_no, payload, fds, fds_lost):
        if fds_lost:                       # the kernel closed the fds that did not fit
            close_fds(fds)
            self._messages.append(TooManyFds(errno.EMSGSIZE, f"peer sent more than {self.max_fds} fds with a message"))
            return
        self._messages.append((msg_id, cmd, flags, error_no, payload, tuple(fds)))

    def unframeable(self, error: Unframeable) -> None:
        self._error = error
        self.reset_framing()

    def connection_lost(self, reason: str = "connection lost") -> None:
        self.cut_short = self.assembled_bytes    # what had arrived of the message it left unfinished
        self._error = ConnectionResetError(reason)
        self.reset_framing()

    def read(self, deadline: float | None = None) -> tuple[int, int, int, int, bytes, tuple[int, ...]]:
        """The next message: (msg_id, cmd, flags, error_no, payload, fds).  Raises Unframeable (a
        ValueError) for an impossible msg_size and ConnectionResetError at end of stream (both end
        the stream: every later read raises the same, once the messages before it are read),
        TooManyFds for a message that brought more than ``max_fds`` fds (it is dropped),
        TimeoutError once ``deadline`` (time.monotonic) has passed with the message incomplete
        (what arrived of it stays), and what the socket raises (BlockingIOError when its receive
        timeout expires)."""
        sock, max_fds, max_msg_size, space = self.sock, self.max_fds, self.max_msg_size, self._cmsg_space
        messages = self._messages
        while True:
            if messages:
                message = messages.popleft()
                if type(message) is TooManyFds:
                    raise message
                return message
            if self._error is not None:
                raise self._error
            if self._buf:
                data, fds, lost = recvmsg_fds(sock, self.next_read_size(), max_fds)
                self.receive_data(data, fds, lost)
            elif self.first_read:
                # One read from the message's start: a reply without fds that fits (every
                # trapped access's) is returned whole, as receive_message would hand it on;
                # anything else goes to the framer.
                data, anc, msg_flags, _ = sock.recvmsg(self.first_read, space, CMSG_CLOEXEC)
                if (not anc and not msg_flags & CTRUNC and len(data) >= HEADER_SIZE
                        and HEADER.unpack_from(data)[2] == len(data)):
                    msg_id, cmd, _, flags, error_no = HEADER.unpack_from(data)
                    return msg_id, cmd, flags, error_no, data[HEADER_SIZE:], ()
                self.receive_read(data, *fds_of(anc, msg_flags))
            else:
                # A header alone, then exactly the rest of its message: a message without fds
                # is returned whole from two recvmsg(), as receive_message would hand it on.
                # Fds, a short read or an impossible size go to the framer, which assembles or
                # refuses them.
                header, anc, msg_flags, _ = sock.recvmsg(HEADER_SIZE, space, CMSG_CLOEXEC)
                size = HEADER.unpack_from(header)[2] if len(header) == HEADER_SIZE else 0
                if anc or msg_flags & CTRUNC or not HEADER_SIZE <= size <= max_msg_size:
                    self.receive_data(header, *fds_of(anc, msg_flags))
                elif size == HEADER_SIZE:
                    msg_id, cmd, _, flags, error_no = HEADER.unpack(header)
                    return msg_id, cmd, flags, error_no, b"", ()
                else:
                    try:
                        rest, anc, msg_flags, _ = sock.recvmsg(size - HEADER_SIZE, space, CMSG_CLOEXEC)
                    except OSError:
                        self.receive_data(header)      # the header stays; the rest comes later
                        raise
                    if not anc and not msg_flags & CTRUNC and len(rest) == size - HEADER_SIZE:
                        msg_id, cmd, _, flags, error_no = HEADER.unpack(header)
                        return msg_id, cmd, flags, error_no, rest, ()
                    self.receive_data(header)
                    if rest or anc or msg_flags & CTRUNC:
                        self.receive_data(rest, *fds_of(anc, msg_flags))
            if (not messages and deadline is not None and time.monotonic() >= deadline
                    and self._error is None):
                raise TimeoutError(f"message left incomplete ({self.assembled_bytes} bytes of it arrived)")


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
