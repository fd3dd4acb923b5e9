"""Serving an emulated GPU: the one helper `hugepfn serve`, the scenarios' served devices and the
pytest plugin use.

``serve(profile, socket_path, backend=...)`` builds the device from its profile, starts the chosen
vfio-user backend's server on the socket (or on an already listening one a manager passed) and
the device's control server on SOCKET.ctl (`hugepfn inject` / `status` / `lspci --socket`).  The
result owns all three; ``close()`` stops the servers and then releases the device's memory.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .control import ControlClient, ControlServer, control_path
from .gpu import GpuDevice
from .vfio_user.backends import BackendChoice, VfioUserBackend, select_backend


@dataclass
class Serving:
    """One running device: ``device`` (the GpuDevice, in this process), ``socket_path``,
    ``backend_name`` ("python" | "libvfio-user"), ``backend_reason`` (why that backend),
    ``server`` and ``control_server`` (None when the socket has no path to put SOCKET.ctl next to)."""
    device: GpuDevice
    socket_path: Path
    backend_name: str
    backend_reason: str
    server: VfioUserBackend
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

    def start_control(self) -> ControlServer:
        """Start the control server on SOCKET.ctl (OSError when it cannot be created there)."""
        self.control_server = ControlServer(self.device, self.control_path, self.server).start()
        return self.control_server

    def close(self) -> None:
        """Stop the control server and the vfio-user server, then release the device (idempotent)."""
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

    def __enter__(self) -> "Serving":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "serving"
        return f"<Serving {self.profile} on {self.socket_path} ({self.backend_name}, {state})>"


def serve(profile: str | os.PathLike, socket_path: str | os.PathLike, backend: str | BackendChoice = "auto",
          state_dir: str | os.PathLike | None = None, listener: socket.socket | None = None,
          control: bool = True, reason: str | None = None, **server_options) -> Serving:
    """Serve a GpuDevice built from ``profile`` on ``socket_path`` with ``backend`` (a name, or a
    choice already made with its ``reason``), and its control server unless ``control`` is False.
    ``listener``: a socket already listening there (passed by a manager); the server serves it
    as it is.  ``server_options`` go to the backend's server (``limits``: ConnectionLimits).
    Raises BackendUnavailable (a ValueError) when the backend cannot run here."""
    if isinstance(backend, BackendChoice):
        choice, why = backend, reason or backend.reason
    else:
        choice, why = select_backend(backend)
    device = GpuDevice.from_profile(profile, state_dir=state_dir)
    server = None
    try:
        server = (choice.Server(device, socket_path, **server_options) if listener is None
                  else choice.Server(device, socket_path, listener=listener, **server_options))
        server.start()
    except BaseException:
        try:
            if server is not None:
                server.close()
        finally:
            device.close()
        raise
    served = Serving(device, Path(socket_path), server.backend_name, why, server)
    if control:
        try:
            served.start_control()
        except BaseException:
            served.close()
            raise
    return served
