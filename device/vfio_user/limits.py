"""How long and how much one vfio-user client may hold the server (both backends).

The server serves one client at a time, so every way a client can stall it has a
bound: a message left half sent, a VERSION that never comes, replies the client
does not read, and (when asked for) plain silence.  A client over a bound is closed
with the reason logged, and the next client is served.
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class ConnectionLimits:
    # A message whose first byte arrived this long ago and is still incomplete closes
    # the client (libvfio-user's backend gets the same bound as SO_RCVTIMEO).
    recv_timeout: float = 2.0
    # Connected and no VERSION yet after this long: closed (QEMU sends it at once).
    negotiate_timeout: float = 5.0
    # Replies queued for one client; above this its requests are no longer read...
    max_output: int = 8 * MiB
    # ...and if it stays above for this long (it does not read) it is closed.
    send_timeout: float = 1.5
    # No message at all for this long after VERSION: closed.  None (the default): a
    # guest may leave its device untouched for hours.
    idle_limit: float | None = None

    def __post_init__(self):
        for name in ("recv_timeout", "negotiate_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.idle_limit is not None and not self.idle_limit > 0:
            raise ValueError("idle-limit must be a positive number of seconds")
        if self.max_output < 2 * MiB:
            raise ValueError("max-output must hold at least one full reply (2 MiB)")
