"""Served devices for tests: a GpuDevice behind a vfio-user server on a private socket.

``serve_device`` is what the ``hugepfn_served_device`` fixture calls; it can be used
without pytest too.  The socket lives in a directory the caller owns (one per test under
the plugin), so parallel workers never share a path.  The serving itself is
hugepfn.device.serving, which `hugepfn serve` and the scenarios' served devices use too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hugepfn.device.serving import Serving as ServedDevice, serve
from hugepfn.device.vfio_user.backends import CHOICES, BackendUnavailable

SOCKET_NAME = "vfio-user.sock"

__all__ = ["SOCKET_NAME", "ServedDevice", "serve_device", "short_dir"]


def serve_device(directory: str | os.PathLike, profile: str | os.PathLike = "tiny", backend: str = "auto",
                 state_dir: str | os.PathLike | None = None, name: str = SOCKET_NAME) -> ServedDevice:
    """Build the device from ``profile``, start ``backend``'s server on ``directory/name`` and
    the device's control server on ``directory/name.ctl`` (as `hugepfn serve` does).

    Raises BackendUnavailable (a ValueError) with the reason when the backend cannot run here."""
    if backend not in CHOICES:
        raise BackendUnavailable(f"unknown backend {backend!r} (choose from {', '.join(CHOICES)})")
    socket_path = Path(directory) / name
    if socket_path.exists():
        raise FileExistsError(f"{socket_path} already exists: give each served device its own name")
    return serve(profile, socket_path, backend, state_dir=state_dir)


def short_dir(preferred: str | os.PathLike, limit: int = 80) -> tuple[str, bool]:
    """A directory for unix sockets: ``preferred`` when paths in it stay well under the 108-byte
    sun_path limit, else a fresh short one under /tmp (second item: the caller removes it)."""
    if len(os.fspath(preferred)) <= limit:
        return os.fspath(preferred), False
    return tempfile.mkdtemp(prefix="hpfn-"), True
