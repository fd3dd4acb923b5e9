"""Telling whoever started `hugepfn serve` that it is ready: ``--ready-fd N`` and systemd's
notify protocol.

* ``--ready-fd N``: once the sockets listen, ``READY=1\\n`` is written to fd N and N is
  closed.  A script reads the pipe: that line means clients may connect now; end-of-file
  without it means the server failed (its one-line error is on stderr).
* ``NOTIFY_SOCKET`` (sd_notify(3)): when set, ``READY=1`` with a ``STATUS=`` line is sent
  as one datagram to that AF_UNIX socket (``@name`` is the abstract namespace), and
  ``STOPPING=1`` when a SIGTERM stops the server, as a ``Type=notify`` service does.

The protocol is one sendto() of a few text lines, so it is written here rather than taken
from a library: the pure-Python ``sdnotify`` package has not changed since 2017 and swallows
every error, and ``systemd-python`` needs libsystemd's headers and a compiler.
"""
from __future__ import annotations

import os
import socket
import stat

from hugepfn.device.vfio_user.transport import _SUN_PATH_MAX


def check_ready_fd(fd: int) -> None:
    """Refuse, before anything is served, an fd a script did not really pass."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ValueError(f"--ready-fd {fd}: not an open file descriptor ({exc.strerror})") from None
    if fd in (0, 1, 2):
        raise ValueError(f"--ready-fd {fd}: that is stdin/stdout/stderr; pass a pipe or a socket")
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise ValueError(f"--ready-fd {fd}: not a pipe, socket or file")


def notify_address(value: str) -> str | bytes:
    """NOTIFY_SOCKET as a sendto() address; ValueError names what is wrong with it."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET={value!r}: only absolute paths and @abstract names are supported")
    length = len(os.fsencode(value))
    if length > _SUN_PATH_MAX:
        raise ValueError(f"NOTIFY_SOCKET: path is {length} bytes, an AF_UNIX address holds at most "
                         f"{_SUN_PATH_MAX}")
    return value


class Readiness:
    """The readiness channels of one `hugepfn serve` run (either, both or none)."""

    def __init__(self, ready_fd: int | None = None, notify_socket: str | None = None):
        if ready_fd is not None:
            check_ready_fd(ready_fd)
        self.ready_fd = ready_fd
        self.notify_to = notify_address(notify_socket) if notify_socket else None

    @classmethod
    def from_environment(cls, ready_fd: int | None) -> "Readiness":
        return cls(ready_fd, os.environ.get("NOTIFY_SOCKET") or None)

    def ready(self, status: str) -> None:
        if self.ready_fd is not None:
            fd, self.ready_fd = self.ready_fd, None
            try:
                os.write(fd, b"READY=1\n")
            finally:
                os.close(fd)
        self._notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self._notify("STOPPING=1\nSTATUS=stopping")

    def _notify(self, message: str) -> None:
        if self.notify_to is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message.encode(), self.notify_to)
            except OSError as exc:
                raise OSError(exc.errno, f"NOTIFY_SOCKET: cannot send to it ({exc.strerror})",
                              os.environ.get("NOTIFY_SOCKET")) from None
