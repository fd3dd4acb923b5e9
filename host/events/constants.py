"""Names shared by the transports and the CLI; importing this costs nothing (no pyroute2),
so `hugepfn --help` and unrelated commands do not pay for the netlink stack."""
from __future__ import annotations

import enum
import os
from pathlib import Path

NETLINK_USERSOCK = 2          # <linux/netlink.h>: reserved for user-space protocols
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
USERSOCK_GROUPS = range(1, 33)

# hugepfn's group on NETLINK_USERSOCK.  Arbitrary but fixed (nothing in a stock
# system uses usersock groups); `hugepfn monitor --group` and the API can change it.
DEFAULT_GROUP = 27


def check_group(group: int) -> int:
    if type(group) is not int or group not in USERSOCK_GROUPS:
        raise ValueError(f"netlink group must be 1..32 (NETLINK_USERSOCK has 32 groups), got {group!r}")
    return group


class Transport(str, enum.Enum):
    AUTO = "auto"
    NETLINK = "netlink"
    UNIX = "unix"

    @classmethod
    def parse(cls, value: "Transport | str") -> "Transport":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"transport must be auto, netlink or unix, got {value!r}") from None


ENV_EVENTS_DIR = "HUGEPFN_EVENTS_DIR"


def default_events_dir() -> Path:
    """Where unix-fallback listeners bind (see unixsock.py)."""
    if os.environ.get(ENV_EVENTS_DIR):
        return Path(os.environ[ENV_EVENTS_DIR])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hugepfn" / "events"
    return Path("/tmp") / f"hugepfn-{os.geteuid()}" / "events"
