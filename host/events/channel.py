"""What every transport shares: a datagram receiver that decodes and skips bad input,
and a publisher that stamps, encodes once and hands the bytes to its senders.

A transport only moves opaque datagrams (``Sender.send`` / ``Receiver.recv_datagram``);
the format lives in message.py, so netlink and the unix fallback carry identical bytes.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import select
import socket
import threading
import time
from typing import Callable, Iterator, Protocol

from .event import MemoryFailureEvent
from .fastpath import decode, encode
from .message import MalformedMessage

log = logging.getLogger("hugepfn.events")

# Largest datagram we accept: an event is bounded under 64 KiB (message.py); the
# margin lets us notice an oversized foreign datagram via MSG_TRUNC.
RECV_BUFSIZE = 1 << 17

Notice = Callable[[str], None]


def log_notice(text: str) -> None:
    log.warning("%s", text)


# One counter per process, so two publishers in one host never reuse a seq.
_seq_counter = itertools.count(1)
_seq_lock = threading.Lock()


def next_seq() -> int:
    with _seq_lock:
        return next(_seq_counter)


class Sender(Protocol):
    name: str        # "netlink" | "unix"
    address: str     # where datagrams go, for messages

    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class Publisher:
    """Publishes MemoryFailureEvents on one or more transports.  Thread-safe.

    ``publish`` never blocks on a slow listener: like netlink multicast, a listener
    whose queue is full loses the event (counted in ``dropped`` for the unix path).
    """

    def __init__(self, senders: list[Sender], *, fallback_reason: str | None = None):
        self._senders = list(senders)
        self._lock = threading.Lock()
        self.fallback_reason = fallback_reason
        self.published = 0

    @property
    def transport(self) -> str:
        return "+".join(s.name for s in self._senders) or "none"

    @property
    def senders(self) -> tuple[Sender, ...]:
        return tuple(self._senders)

    def publish(self, event: MemoryFailureEvent) -> MemoryFailureEvent:
        """Send `event` to every listener; returns it stamped with its seq and timestamp."""
        stamped = event.stamped(seq=next_seq(), timestamp_ns=time.time_ns(), publisher_pid=os.getpid())
        data = encode(stamped, port_id=stamped.publisher_pid)
        with self._lock:
            for sender in list(self._senders):
                try:
                    sender.send(data)
                except PermissionError as exc:
                    if len(self._senders) == 1:
                        raise
                    # "auto": keep publishing on the other transport, say why once.
                    self._senders.remove(sender)
                    sender.close()
                    self.fallback_reason = f"{sender.name} send not permitted ({exc.strerror})"
                    log_notice(f"hugepfn events: {self.fallback_reason}; continuing on {self.transport}")
            self.published += 1
        return stamped

    def close(self) -> None:
        with self._lock:
            for sender in self._senders:
                sender.close()
            self._senders.clear()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscriber:
    """Receives datagrams on one socket and yields the decoded events.

    Malformed or foreign datagrams are reported through ``on_notice`` (one line each)
    and skipped; they never end the subscription.
    """

    transport = "?"

    def __init__(self, sock: socket.socket, address: str, *, on_notice: Notice | None = None):
        sock.setblocking(False)
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self.address = address
        self.on_notice = on_notice or log_notice
        self.fallback_reason: str | None = None
        self.received = 0
        self.skipped = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def describe(self) -> str:
        return self.address

    def receive(self, timeout: float | None = None) -> MemoryFailureEvent | None:
        """The next valid event, or None when `timeout` seconds pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            data = self._recv_datagram(remaining)
            if data is None:
                return None
            try:
                event = decode(data)
            except MalformedMessage as exc:
                self.skipped += 1
                self.on_notice(f"skipped malformed message on {self.describe()}: {exc}")
                continue
            self.received += 1
            return event

    def __iter__(self) -> Iterator[MemoryFailureEvent]:
        while True:
            event = self.receive(None)
            if event is not None:
                yield event

    def _recv_datagram(self, timeout: float | None) -> bytes | None:
        while True:
            ready = self._poll.poll(None if timeout is None else math.ceil(timeout * 1000))
            if not ready:
                return None
            try:
                data, _anc, flags, _addr = self._sock.recvmsg(RECV_BUFSIZE)
            except BlockingIOError:
                continue  # spurious wakeup
            except OSError as exc:
                if self._recv_error(exc):
                    continue
                raise
            if flags & socket.MSG_TRUNC:
                self.skipped += 1
                self.on_notice(f"skipped malformed message on {self.describe()}: "
                               f"datagram larger than {RECV_BUFSIZE} bytes")
                continue
            return data

    def _recv_error(self, exc: OSError) -> bool:
        """True when the error was reported and receiving can go on."""
        return False

    def close(self) -> None:
        if self._sock.fileno() != -1:
            self._poll.unregister(self._sock.fileno())
            self._sock.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
