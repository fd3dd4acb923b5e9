"""AF_UNIX SOCK_STREAM plumbing for vfio-user, shared by the server and the host client.

* fds travel as SCM_RIGHTS on the same sendmsg() as the message they belong to;
* a receiver reads up to the end of the message it assembles and no further
  (``framing.Framer.next_read_size``, ``recvmsg_fds``), so the fds it gets are
  exactly those of that message, as libvfio-user and QEMU do, also when a peer sent
  a message in two parts and attached fds to the second.  The one exception, the
  server's first read of a message, may run into the next one: the fds it gets are
  then the message's in which it ended (``framing.Framer.receive_read`` says why);
* the listening socket is created with mode 0600 in a directory the user owns.
"""
from __future__ import annotations

import array
import contextlib
import errno
import functools
import os
import socket
import stat
import struct
import time
from pathlib import Path

_SUN_PATH_MAX = 107   # sizeof(sun_path) - 1


@contextlib.contextmanager
def _addressable(path: Path):
    """A name for ``path`` that fits sun_path: itself, or /proc/self/fd/N/<name>
    through an O_PATH descriptor of its directory (pytest's tmp_path can be long)."""
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def check_socket_directory(path: Path) -> None:
    """The socket must live in a directory this user owns (nobody else can swap it)."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "socket directory does not exist", str(parent)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "socket directory is not a directory", str(parent))
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"socket directory is owned by uid {st.st_uid}, not by "
                              f"this user ({os.geteuid()})", str(parent))
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise PermissionError(errno.EPERM, "socket directory is world-writable without the sticky bit",
                              str(parent))


def listen_unix(path: str | os.PathLike, backlog: int = 4) -> socket.socket:
    """Create the listening socket file with mode 0600.

    A stale socket file (nobody listening) is replaced; a live one is an error.
    """
    path = Path(path)
    check_socket_directory(path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
        if _someone_listens(path):
            raise OSError(errno.EADDRINUSE, "a server is already listening on this socket", str(path))
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # bind() creates the file with the umask applied: narrow it so the file is
        # never reachable by others, even for the instant before chmod().
        old = os.umask(0o177)
        try:
            with _addressable(path) as name:
                sock.bind(name)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _someone_listens(path: Path) -> bool:
    try:
        connect_unix(path, timeout=0.5).close()
        return True
    except OSError:
        return False


def connect_unix(path: str | os.PathLike, timeout: float | None = None) -> socket.socket:
    """Connect; a full listen backlog (EAGAIN: the server has not accepted the
    previous client yet) is retried until ``timeout``."""
    deadline = time.monotonic() + (timeout if timeout is not None else 10.0)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _addressable(Path(path)) as name:
                sock.connect(name)
            if timeout is not None:
                set_io_timeout(sock, timeout)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
        except BaseException:
            sock.close()
            raise


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-side send/receive timeouts (SO_SNDTIMEO/SO_RCVTIMEO) on a blocking socket.

    Unlike ``settimeout()``, which makes Python poll() before every call, this keeps
    one syscall per send/recv on the hot path; an expired timeout raises
    BlockingIOError (EAGAIN).
    """
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)


def send_some(sock: socket.socket, data, fds: tuple[int, ...] | list[int] = ()) -> int:
    """One non-blocking sendmsg(): the bytes the kernel took (0 when the socket buffer
    is full).  ``fds`` ride on it, so they arrive with the first byte sent."""
    try:
        if fds:
            return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], SEND_FLAGS)
        return sock.send(data, SEND_FLAGS)
    except BlockingIOError:
        return 0


def send_with_fds(sock: socket.socket, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
    """Send one whole message; its fds ride on the first sendmsg()."""
    view = memoryview(data)
    if fds:
        sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(view)
    if sent < len(view):
        sock.sendall(view[sent:])


class TooManyFds(OSError):
    """The peer attached more fds than we accept in one message (MSG_CTRUNC)."""


# Plain ints: arithmetic on socket's IntFlag members costs microseconds per message.
CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
CTRUNC = int(socket.MSG_CTRUNC)          # (msg_flags also echoes MSG_CMSG_CLOEXEC back)
SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
DONTWAIT = int(socket.MSG_DONTWAIT)


def recvmsg_fds(sock: socket.socket, nbytes: int, max_fds: int, flags: int = 0) -> tuple[bytes, list[int], bool]:
    """One recvmsg(): up to ``nbytes``, the fds that came with them (close-on-exec) and
    whether the peer attached more fds than ``max_fds`` (MSG_CTRUNC: the kernel closed
    the ones that did not fit; the ones that did are returned, the caller owns them)."""
    data, ancdata, msg_flags, _ = sock.recvmsg(nbytes, cmsg_space(max_fds), CMSG_CLOEXEC | flags)
    if not ancdata and not msg_flags & CTRUNC:
        return data, [], False              # the common case: no fds
    return (data, *fds_of(ancdata, msg_flags))


def fds_of(ancdata, msg_flags: int) -> tuple[list[int], bool]:
    """The fds of one recvmsg()'s ancillary data, and whether some were lost (MSG_CTRUNC)."""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    return fds, bool(msg_flags & CTRUNC)


def recv_flags(flags: int = 0) -> int:
    """The flags recvmsg_fds passes: received fds are close-on-exec."""
    return CMSG_CLOEXEC | flags


@functools.lru_cache(maxsize=None)
def cmsg_space(max_fds: int) -> int:
    return socket.CMSG_SPACE(max(max_fds, 1) * 4)
