"""The control channel of a served device: what `hugepfn inject` and `hugepfn status` talk to.

A unix stream socket next to the vfio-user socket (``control_path(sock)`` = sock + ".ctl"),
mode 0600 in a directory the user owns, carrying JSON lines: one request object per line,
one reply object per line.

    {"op": "inject", "bar": 2, "offset": "0x123000", "granularity": "4K"}
    {"op": "inject", "dpa": 4780593152, "granularity": 64, "error_type": "multi-ecc"}
    {"op": "repair", "bar": 2, "offset": 0x123000, "length": 4096}
    {"op": "status"}
    {"op": "config"}                        (config space as a client reads it, for lspci)

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "<one line>"}``.  Numbers may be
JSON integers or strings ("0x1000", "4K", "2MiB").  Anything malformed (not JSON, not an
object, unknown op or field, wrong type, an over-long line) gets an error reply and the
connection stays usable; the server never dies of its input.  Injection goes through
``GpuDevice.inject_poison``, so it does exactly what the device does for any other caller:
poison set, persisted, CPER record queued, error interrupt raised to whoever is attached.
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import socketserver
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hugepfn.abi.cper import MEMORY_ERROR_TYPES
from hugepfn.abi.sizes import format_size, parse_size
from hugepfn.device.poison import DEFAULT_GRANULARITY
from hugepfn.device.vfio_user.transport import connect_unix, listen_unix

if TYPE_CHECKING:
    from hugepfn.device.vfio_user.backends import VfioUserBackend

CONTROL_SUFFIX = ".ctl"
MAX_LINE = 64 * 1024          # a request longer than this is refused, not buffered forever
_ERROR_TYPE_NAMES = {v: k for k, v in MEMORY_ERROR_TYPES.items()}


def control_path(socket_path: str | os.PathLike) -> str:
    """The control socket that belongs to a vfio-user socket."""
    return os.fspath(socket_path) + CONTROL_SUFFIX


class ControlError(ValueError):
    """A request the device refused (the server's one-line reason)."""


# -- request parsing ---------------------------------------------------------------------------
def _number(request: dict, key: str, default: Any = None, required: bool = False) -> int | None:
    """A number or size of the request (the grammar of hugepfn.abi.sizes), below 2**64."""
    value = request.get(key, default)
    if value is None:
        if required:
            raise ControlError(f"{key}: missing")
        return None
    try:
        return parse_size(value, limit=1 << 64)
    except ValueError as exc:
        raise ControlError(f"{key}: {exc}") from None


def _error_type(request: dict) -> int:
    value = request.get("error_type", "multi-ecc")
    if isinstance(value, str) and value in MEMORY_ERROR_TYPES:
        return MEMORY_ERROR_TYPES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise ControlError(f"error_type: expected 0..255 or one of {', '.join(MEMORY_ERROR_TYPES)}, got {value!r}")


def _only(request: dict, allowed: set[str]) -> None:
    unknown = sorted(set(request) - allowed - {"op"})
    if unknown:
        raise ControlError(f"unknown field(s) {', '.join(unknown)} (expected {', '.join(sorted(allowed)) or 'none'})")


# -- the server --------------------------------------------------------------------------------
class ControlServer:
    """Serves the control protocol for ``device`` on ``path`` in a background thread.

    ``server`` (optional) is the vfio-user server of the same device, so status can say
    which backend serves it and whether a client is attached."""

    def __init__(self, device, path: str | os.PathLike, server=None):
        self.device = device
        self.path = Path(path)
        self.server = server
        self.requests = 0
        self.errors = 0
        self._listener = listen_unix(self.path, backlog=8)     # mode 0600, checked directory
        control = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                control._serve_connection(self.connection)

        self._socketserver = _Server(self._listener, Handler)
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    def start(self) -> "ControlServer":
        self._thread = threading.Thread(target=self._accept_until_closed, name=f"hugepfn control {self.path.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _accept_until_closed(self) -> None:
        """Accept connections (each is served in its own thread) until close() writes to the wake
        pipe.  The thread sleeps in one select() on both: socketserver's serve_forever would wake
        every poll_interval to look for a shutdown request, 20 times a second at 0.05 s (about
        0.3 % of a CPU here, in the process that serves vfio-user)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                self._socketserver.handle_request()     # timeout 0: accepts the one that is there

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"!")
            self._thread.join(timeout=5)
            self._thread = None
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._socketserver.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one connection ------------------------------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip() and not self._reply(conn, self.handle_line(line)):
                    return
            if len(buf) > MAX_LINE:
                self._reply(conn, self._error(f"request longer than {MAX_LINE} bytes"))
                return

    def _reply(self, conn: socket.socket, reply: dict) -> bool:
        try:
            conn.sendall(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            return True
        except OSError:
            return False

    def _error(self, message: str) -> dict:
        self.errors += 1
        return {"ok": False, "error": " ".join(str(message).split())}

    def handle_line(self, line: bytes | str) -> dict:
        """One request line -> its reply (never raises for anything the peer sent)."""
        self.requests += 1
        if len(line) > MAX_LINE:
            return self._error(f"request longer than {MAX_LINE} bytes")
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:
            return self._error(f"not JSON: {exc}")
        return self.handle(request)

    def handle(self, request: Any) -> dict:
        if not isinstance(request, dict):
            return self._error("a request is a JSON object with an \"op\"")
        op = request.get("op")
        handler = {"inject": self._inject, "repair": self._repair, "status": self._status,
                   "config": self._config}.get(op) if isinstance(op, str) else None
        if handler is None:
            return self._error(f"op: expected inject, repair, status or config, got {op!r}")
        try:
            return {"ok": True, "op": op, **handler(request)}
        except (ValueError, OSError) as exc:       # PoisonError is a ValueError
            return self._error(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        except Exception as exc:                    # a bug must not take the server down with it
            return self._error(f"internal error: {type(exc).__name__}: {exc}")

    # -- operations ----------------------------------------------------------------------------
    def _inject(self, request: dict) -> dict:
        _only(request, {"bar", "offset", "dpa", "granularity", "error_type"})
        bar, offset, dpa = request.get("bar"), _number(request, "offset"), _number(request, "dpa")
        if bar is not None and (isinstance(bar, bool) or not isinstance(bar, int)):
            raise ControlError(f"bar: expected a BAR index, got {bar!r}")
        granularity = _number(request, "granularity", default=DEFAULT_GRANULARITY)
        error_type = _error_type(request)
        device = self.device
        # The device lock spans the injection and the sequence read, so the number reported
        # is this record's even while another client injects.
        with device.poison.lock:
            event = device.inject_poison(bar=bar, offset=offset, dpa=dpa, granularity=granularity,
                                         error_type=error_type)
            sequence = device.error_sequence
        return {"bar": event.bar, "offset": event.offset, "length": event.length, "dpa": event.dpa,
                "granularity": event.granularity, "error_type": _ERROR_TYPE_NAMES.get(event.error_type,
                                                                                      event.error_type),
                "sequence": sequence}

    def _repair(self, request: dict) -> dict:
        _only(request, {"bar", "offset", "length"})
        bar = request.get("bar")
        if isinstance(bar, bool) or not isinstance(bar, int):
            raise ControlError(f"bar: expected a BAR index, got {bar!r}")
        offset = _number(request, "offset", required=True)
        length = _number(request, "length", default=4096)
        if length == 0:
            raise ControlError("length: must be positive")
        cleared = self.device.poison.repair(bar, offset, length)
        return {"bar": bar, "offset": offset, "length": length, "cleared": cleared}

    def _status(self, request: dict) -> dict:
        _only(request, set())
        return device_status(self.device, self.server)

    def _config(self, request: dict) -> dict:
        _only(request, set())
        return device_config(self.device)


def device_status(device, server: "VfioUserBackend | None" = None) -> dict:
    """What a served device holds: BARs, client, poisoned memory, error queue."""
    bars = []
    for spec in device.profile.bars:
        info = device.region_info(spec.index)
        entry = {"index": spec.index, "kind": spec.kind, "size": info.size,
                 "access": "fd" if info.fd is not None else "trapped"}
        if spec.kind == "memory":
            entry.update(memory_size=spec.memory_size, dpa_base=spec.dpa_base)
        bars.append(entry)
    with device.poison.lock:
        ranges = [{"bar": r.bar, "offset": r.offset, "length": r.length, "dpa": r.dpa} for r in device.poison]
        pages = sum(sum(1 for _ in device.poison.poisoned_pages(bar)) for bar in device.poison.bars)
        queue = device.registers.queue
        errq = {"count": len(queue.records), "capacity": queue.capacity, "lost": queue.lost,
                "head": queue.head, "sequence": device.error_sequence}
    facts = server.status() if server is not None else {}
    client = {key: facts.get(key) for key in ("backend", "attached", "clients_served")}
    out = {"profile": device.profile.name, **client, "bars": bars,
           "poisoned": ranges, "poisoned_pages": pages, "error_queue": errq}
    if server is not None:                  # what the backend can say about its client
        out["vfio_user"] = {key: facts[key] for key in ("clients_refused", "dma_windows", "irq_eventfds")
                            if key in facts}
    return out


def device_config(device) -> dict:
    """Config space as a client reads it now (BARs hold what the client's firmware programmed),
    hex-encoded, with the sysfs ``resource`` lines that go with it (`hugepfn lspci --socket`)."""
    from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX as CONFIG
    from hugepfn.device.sysfs_tree import resource_lines

    config = device.region_read(CONFIG, 0, device.region_info(CONFIG).size)
    return {"config": config.hex(), "resource": resource_lines(device)}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    timeout = 0             # handle_request() never waits: ControlServer's select() did

    def __init__(self, listener: socket.socket, handler):
        # The listening socket is made by listen_unix (mode 0600, checked directory): hand it over.
        super().__init__(listener.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener


# -- the client --------------------------------------------------------------------------------
class ControlClient:
    """Talks to a ControlServer: ``inject``, ``repair`` and ``status`` return the reply's
    fields; an error reply raises ControlError with the server's message."""

    def __init__(self, path: str | os.PathLike, timeout: float | None = 10.0):
        self.path = os.fspath(path)
        try:
            self.sock = connect_unix(self.path, timeout=timeout)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot connect to the control socket ({exc.strerror}); "
                                     f"is `hugepfn serve` running?", self.path) from None
        self._file = self.sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, request: dict) -> dict:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionError(errno.ECONNRESET, "the control server closed the connection")
        try:
            reply = json.loads(line) if len(line) <= MAX_LINE else None
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            raise ConnectionError(errno.EPROTO, "the control server's reply is not a JSON object of at most "
                                                f"{MAX_LINE} bytes")
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "request failed"))
        return reply

    def inject(self, *, bar: int | None = None, offset: int | str | None = None, dpa: int | str | None = None,
               granularity: int | str = 4096, error_type: int | str | None = None) -> dict:
        request = {"op": "inject", "granularity": granularity}
        for key, value in (("bar", bar), ("offset", offset), ("dpa", dpa), ("error_type", error_type)):
            if value is not None:
                request[key] = value
        return self.request(request)

    def repair(self, *, bar: int, offset: int | str, length: int | str = 4096) -> dict:
        return self.request({"op": "repair", "bar": bar, "offset": offset, "length": length})

    def status(self) -> dict:
        return self.request({"op": "status"})

    def config(self) -> dict:
        return self.request({"op": "config"})


def describe_injection(reply: dict) -> str:
    """One line for people: what was poisoned."""
    return (f"poisoned BAR{reply['bar']} offset {reply['offset']:#x} length {format_size(reply['length'])} "
            f"(dpa {reply['dpa']:#x}, granularity {format_size(reply['granularity'])}, "
            f"{reply['error_type']}), error record #{reply['sequence']}")
