"""A listening socket handed over by a manager (`hugepfn serve --fd=N`).

The vfio-user backend program conventions (QEMU's docs/interop/vfio-user.rst, "Backend
Program Conventions", after vhost-user's) let a management layer create and bind the
socket itself and start the backend with it as file descriptor N.  This module checks
that N really is what the server needs (an AF_UNIX stream socket in the listening state)
and says where clients reach it, so that a wrong fd is one clear line, never a hang.
"""
from __future__ import annotations

import errno
import os
import socket
import stat


def adopt_listening_socket(fd: int) -> tuple[socket.socket, str | None]:
    """The socket object for ``fd`` and its address: a path, ``@name`` for an abstract
    socket, or None for an unnamed one.  ValueError (one line) if ``fd`` is unfit."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ValueError(f"--fd {fd}: not an open file descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"--fd {fd}: not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"--fd {fd}: a {sock.family.name} {sock.type.name} socket; vfio-user needs "
                             "an AF_UNIX SOCK_STREAM socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"--fd {fd}: the socket is not listening (the manager must bind() and listen())")
    except BaseException:
        sock.detach()          # leave the manager's descriptor as it was
        raise
    sock.set_inheritable(False)
    sock.setblocking(True)
    return sock, _address(sock)


def _address(sock: socket.socket) -> str | None:
    try:
        name = sock.getsockname()
    except OSError as exc:     # cannot happen for a bound AF_UNIX socket; say so if it does
        raise OSError(exc.errno or errno.EINVAL, f"cannot read the passed socket's address: {exc}") from None
    if isinstance(name, bytes):            # abstract namespace: b"\0name"
        return "@" + name[1:].decode(errors="replace") if name else None
    return name or None
