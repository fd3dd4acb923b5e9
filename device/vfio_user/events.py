"""Events the server engine reports (small immutable records, as h11's are).

They tell whoever drives the engine what happened on the connection; replies to
the client are separate (``ServerEngine.data_to_send``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Negotiated:
    major: int
    minor: int
    client_capabilities: dict
    reply_capabilities: dict


@dataclass(frozen=True)
class DmaMapped:
    address: int
    size: int
    flags: int
    has_fd: bool


@dataclass(frozen=True)
class DmaUnmapped:
    address: int
    size: int
    count: int = 1          # windows dropped (UNMAP_ALL may drop many)


@dataclass(frozen=True)
class IrqsSet:
    index: int
    start: int
    count: int
    flags: int
    nfds: int


@dataclass(frozen=True)
class DeviceWasReset:
    pass


@dataclass(frozen=True)
class CommandFailed:
    msg_id: int
    cmd: int
    errno: int
    message: str


@dataclass(frozen=True)
class PeerReply:
    """The client's reply to a server->client DMA_READ/DMA_WRITE."""
    msg_id: int
    cmd: int
    error_no: int
    payload: bytes


@dataclass(frozen=True)
class Disconnected:
    reason: str
