"""Listening for memory-failure events as `hugepfn monitor` does (the command and the
hugepfn_monitor fixture both use it).

A Monitor subscribes on a transport (``auto``: netlink where this process may join the group,
else the unix-socket fallback, saying why), receives events and formats them exactly as the
command prints them: ``lines`` (text) and ``json_lines``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .constants import DEFAULT_GROUP


class Monitor:
    def __init__(self, transport: str = "auto", *, group: int = DEFAULT_GROUP, netns: str | None = None,
                 events_dir: str | os.PathLike | None = None, on_notice=None) -> None:
        from .transport import subscriber  # pyroute2: only when listening

        self.notices: list[str] = []
        self.events: list = []
        self.subscriber = subscriber(transport, group=group, netns=netns,
                                     events_dir=Path(events_dir) if events_dir is not None else None,
                                     on_notice=on_notice or self.notices.append)

    @property
    def status(self) -> str:
        """The line `hugepfn monitor` prints on stderr when it starts listening."""
        sub = self.subscriber
        if sub.fallback_reason:
            return f"{sub.fallback_reason}; falling back to {sub.describe()}"
        return f"listening on {sub.describe()}"

    def receive(self, timeout: float | None = None):
        """The next event (kept in ``events``), or None after ``timeout`` seconds."""
        event = self.subscriber.receive(timeout)
        if event is not None:
            self.events.append(event)
        return event

    def collect(self, count: int, timeout: float = 5.0) -> list:
        """Receive until ``count`` events arrived in all or ``timeout`` seconds passed; returns
        every event received so far."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.receive(remaining) is None:
                break
        return list(self.events)

    @property
    def lines(self) -> list[str]:
        """The received events as `hugepfn monitor` prints them."""
        return [event.summary() for event in self.events]

    @property
    def json_lines(self) -> list[str]:
        """The received events as `hugepfn monitor --json` prints them."""
        return [event.to_json() for event in self.events]

    def close(self) -> None:
        self.subscriber.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
