"""Served devices for tests: a GpuDevice behind a vfio-user server on a private socket.

``serve_device`` is what the ``hugepfn_served_device`` fixture calls; it can be used
without pytest too.  The socket lives in a directory the caller owns (one per test under
the plugin), so parallel workers never share a path.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hugepfn.device.control import ControlClient, ControlServer, control_path
from hugepfn.device.gpu import GpuDevice
from hugepfn.device.vfio_user.backends import CHOICES, BackendUnavailable, select_backend

SOCKET_NAME = "vfio-user.sock"


@dataclass
class ServedDevice:
    """One running server: ``device`` (the GpuDevice, in this process), ``socket_path``,
    ``backend_name`` ("python" | "libvfio-user"), ``backend_reason`` (why that backend) and
    ``control_path``, the control socket `hugepfn inject` / `hugepfn status` talk to."""
    device: GpuDevice
    socket_path: Path
    backend_name: str
    backend_reason: str
    server: object
    control_server: ControlServer | None = None
    closed: bool = field(default=False, init=False)

    @property
    def control_path(self) -> str:
        return control_path(self.socket_path)

    def control(self) -> ControlClient:
        """A new client of the control socket (close it, or use it as a context manager)."""
        return ControlClient(self.control_path)

    @property
    def profile(self) -> str:
        return self.device.profile.name

    def close(self) -> None:
        """Stop the server, then release the device's memory (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.control_server is not None:
                self.control_server.close()
        finally:
            try:
                self.server.close()
            finally:
                self.device.close()

    def __enter__(self) -> "ServedDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "serving"
        return f"<ServedDevice {self.profile} on {self.socket_path} ({self.backend_name}, {state})>"


def serve_device(directory: str | os.PathLike, profile: str | os.PathLike = "tiny", backend: str = "auto",
                 state_dir: str | os.PathLike | None = None, name: str = SOCKET_NAME) -> ServedDevice:
    """Build the device from ``profile``, start ``backend``'s server on ``directory/name`` and
    the device's control server on ``directory/name.ctl`` (as `hugepfn serve` does).

    Raises BackendUnavailable (a ValueError) with the reason when the backend cannot run here."""
    if backend not in CHOICES:
        raise BackendUnavailable(f"unknown backend {backend!r} (choose from {', '.join(CHOICES)})")
    choice, why = select_backend(backend)
    socket_path = Path(directory) / name
    if socket_path.exists():
        raise FileExistsError(f"{socket_path} already exists: give each served device its own name")
    device = GpuDevice.from_profile(profile, state_dir=state_dir)
    try:
        server = choice.Server(device, socket_path)
        server.start()
    except BaseException:
        device.close()
        raise
    served = ServedDevice(device, socket_path, getattr(server, "backend_name", choice.name), why, server)
    try:
        served.control_server = ControlServer(device, control_path(socket_path), server).start()
    except BaseException:
        served.close()
        raise
    return served


def short_dir(preferred: str | os.PathLike, limit: int = 80) -> tuple[str, bool]:
    """A directory for unix sockets: ``preferred`` when paths in it stay well under the 108-byte
    sun_path limit, else a fresh short one under /tmp (second item: the caller removes it)."""
    if len(os.fspath(preferred)) <= limit:
        return os.fspath(preferred), False
    return tempfile.mkdtemp(prefix="hpfn-"), True
