"""Backend ``python``: the project's own sans-IO engine behind a socket server."""
from __future__ import annotations

from .server import VfioUserServer

BACKEND_NAME = "python"


def is_available() -> tuple[bool, str]:
    return True, "pure-Python vfio-user engine (always available)"


class Server(VfioUserServer):
    backend_name = BACKEND_NAME
