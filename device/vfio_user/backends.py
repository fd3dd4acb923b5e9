"""Choosing a vfio-user backend, and what every backend's server is (``VfioUserBackend``).

Each backend module exposes ``is_available() -> (bool, reason)`` and a class
``Server(device, socket_path, limits=...)`` that is a ``VfioUserBackend``.
``libvfio-user`` is imported lazily: a missing module or a missing shared library
makes it unavailable, with the reason, never an ImportError.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol, runtime_checkable

BACKEND_MODULES = {
    "libvfio-user": "hugepfn.device.vfio_user.backend_libvfio_user",
    "python": "hugepfn.device.vfio_user.backend_python",
}
AUTO_ORDER = ("libvfio-user", "python")   # prefer the reference implementation when present
CHOICES = ("auto", *BACKEND_MODULES)


@runtime_checkable
class VfioUserBackend(Protocol):
    """A vfio-user server of one device, whichever backend runs it (both derive from
    hugepfn.device.vfio_user.server_loop.ServerLoop)."""

    backend_name: str                     # "python" | "libvfio-user"

    @property
    def attached(self) -> bool:
        """A client has negotiated and is being served."""

    def status(self) -> dict:
        """backend, socket, attached, clients_served, clients_refused, clients_dropped,
        dma_windows [(iova, size, mapped)], and what else the backend knows (irq_eventfds,
        client_capabilities)."""

    def start(self) -> "VfioUserBackend": ...
    def serve_forever(self) -> None: ...
    def close(self) -> None: ...
    def dma_read(self, iova: int, size: int) -> bytes: ...
    def dma_write(self, iova: int, data: bytes) -> None: ...


class BackendUnavailable(ValueError):
    """The requested backend cannot run here (the message says why)."""


@dataclass(frozen=True)
class BackendChoice:
    name: str
    module: ModuleType | None
    available: bool
    reason: str

    @property
    def Server(self):
        return self.module.Server


def _probe(name: str) -> BackendChoice:
    try:
        module = importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:
        return BackendChoice(name, None, False, f"module not importable: {exc}")
    try:
        ok, reason = module.is_available()
    except Exception as exc:   # a broken probe makes the backend unavailable, not the program
        return BackendChoice(name, module, False, f"availability probe failed: {exc}")
    return BackendChoice(name, module, bool(ok), reason)


def available_backends() -> dict[str, BackendChoice]:
    """Every known backend with whether it can run here and why (not)."""
    return {name: _probe(name) for name in BACKEND_MODULES}


def select_backend(name: str = "auto") -> tuple[BackendChoice, str]:
    """The backend to use and a one-line explanation of the choice."""
    if name == "auto":
        skipped = []
        for candidate in AUTO_ORDER:
            choice = _probe(candidate)
            if choice.available:
                why = f"auto: {candidate} ({choice.reason})"
                if skipped:
                    why += "; " + "; ".join(skipped)
                return choice, why
            skipped.append(f"{candidate} unavailable: {choice.reason}")
        raise BackendUnavailable("no vfio-user backend available: " + "; ".join(skipped))
    if name not in BACKEND_MODULES:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(CHOICES)})")
    choice = _probe(name)
    if not choice.available:
        raise BackendUnavailable(f"backend {name} is not available: {choice.reason}")
    return choice, f"requested: {name} ({choice.reason})"
