"""Errors of the vfio-user engine.

``CommandError`` carries an errno; the engine's dispatcher turns it into a
header-only error reply in one place.  ``RemoteProtocolError`` means the peer
broke framing (a malformed header): the only answer is to disconnect.
"""
from __future__ import annotations

import errno as _errno
import os


class CommandError(OSError):
    """A command failed; the reply is header-only with ``errno`` set."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)


def einval(message: str) -> CommandError:
    return CommandError(_errno.EINVAL, message)


class RemoteProtocolError(Exception):
    """The peer sent something that cannot be framed; the connection must close."""


class LocalProtocolError(Exception):
    """This side tried to do something the protocol state does not allow."""


def errno_name(err: int) -> str:
    return _errno.errorcode.get(err, str(err)) + f" ({os.strerror(err)})" if err else "0"
