"""The fallback transport: the same datagrams over unix sockets in a private directory.

Where netlink is not permitted (joining a usersock group needs CAP_NET_ADMIN), a
listener binds its own datagram socket ``<dir>/<pid>-<token>.sock`` and a publisher
sends each event to every socket in ``<dir>``: the fan-out of a multicast group,
with the filesystem as the membership list.  The directory is

    $HUGEPFN_EVENTS_DIR                       if set, else
    $XDG_RUNTIME_DIR/hugepfn/events           if XDG_RUNTIME_DIR is set, else
    /tmp/hugepfn-<uid>/events

created mode 0700 and refused unless owned by us and closed to group and others
(so nobody else can read events or plant a socket); sockets are mode 0600.
"""
from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
from pathlib import Path

from .channel import Notice, Subscriber, log_notice
from .constants import default_events_dir

SOCKET_SUFFIX = ".sock"


class UnsafeEventsDir(PermissionError):
    """The fallback directory exists but others could read or write it."""


def _private_components(path: Path) -> list[Path]:
    """The directories we own and create: the leaf, plus `hugepfn*` parents we made."""
    chain = [path]
    if path.name == "events" and path.parent.name.startswith("hugepfn"):
        chain.insert(0, path.parent)
    return chain


def _check_private(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeEventsDir(errno.EPERM, "events path is not a directory (or is a symlink)", str(path))
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise UnsafeEventsDir(errno.EPERM,
                              f"events directory must be ours and mode 0700 "
                              f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})", str(path))


def ensure_events_dir(path: Path) -> Path:
    for component in _private_components(path):
        try:
            os.mkdir(component, 0o700)
        except FileExistsError:
            pass
        _check_private(component)
    return path


def existing_events_dir(path: Path) -> bool:
    """True when `path` exists and is safe to publish into; False when absent."""
    try:
        for component in _private_components(path):
            _check_private(component)
    except FileNotFoundError:
        return False
    return True


class UnixSender:
    """Sends one datagram to every listener socket in the events directory."""

    name = "unix"

    def __init__(self, events_dir: Path | None = None):
        self.events_dir = Path(events_dir) if events_dir is not None else default_events_dir()
        self.address = f"unix sockets in {self.events_dir}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a stuck listener must not stall memory_failure
        self.delivered = 0
        self.dropped = 0
        self._warned_unsafe = False

    def listeners(self) -> list[Path]:
        try:
            if not existing_events_dir(self.events_dir):
                return []
        except UnsafeEventsDir as exc:
            if not self._warned_unsafe:
                self._warned_unsafe = True
                log_notice(f"hugepfn events: not publishing to {exc.filename}: {exc.strerror}")
            return []
        with os.scandir(self.events_dir) as entries:
            return sorted(Path(e.path) for e in entries if e.name.endswith(SOCKET_SUFFIX))

    def send(self, data: bytes) -> None:
        for path in self.listeners():
            try:
                self._sock.sendto(data, str(path))
                self.delivered += 1
            except ConnectionRefusedError:
                # Nobody bound: a listener that died without cleaning up.  Only
                # sockets are removed; anything else named *.sock is left alone.
                self._remove_stale(path)
            except FileNotFoundError:
                pass  # the listener closed between scandir and sendto
            except BlockingIOError:
                self.dropped += 1  # listener's queue full: lost, like a netlink overrun
            except OSError as exc:
                # One odd listener (say a socket file someone chmod'ed) must not turn
                # into an exception inside the host's memory_failure path.
                self.dropped += 1
                log_notice(f"hugepfn events: could not deliver to {path}: {exc.strerror or exc}")

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._sock.close()


class UnixSubscriber(Subscriber):
    transport = "unix"

    def __init__(self, events_dir: Path | None = None, *, on_notice: Notice | None = None):
        self.events_dir = ensure_events_dir(Path(events_dir) if events_dir is not None
                                            else default_events_dir())
        self.path = self.events_dir / f"{os.getpid()}-{secrets.token_hex(4)}{SOCKET_SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.path))
            # The 0700 directory already keeps others out; 0600 says so on the file too.
            os.chmod(self.path, 0o600)
        except BaseException:
            sock.close()
            raise
        super().__init__(sock, f"unix socket {self.path}", on_notice=on_notice)

    def close(self) -> None:
        was_open = self.fileno() != -1
        super().close()
        if was_open:
            self.path.unlink(missing_ok=True)
