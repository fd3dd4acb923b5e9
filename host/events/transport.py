"""Choosing a transport: "netlink", "unix", or "auto" (netlink where permitted).

auto, listening:   join the NETLINK_USERSOCK group; if that is not permitted (EPERM,
                   no CAP_NET_ADMIN) or netlink is missing, listen on the unix fallback
                   and record why in ``fallback_reason``.
auto, publishing:  send to the netlink group (any user may) AND to every unix-fallback
                   listener present, so a root monitor and an unprivileged one both hear
                   each event exactly once.
"""
from __future__ import annotations

import errno
from pathlib import Path

from .channel import Notice, Publisher, Sender, Subscriber
from .constants import DEFAULT_GROUP, Transport, check_group
from .netlink import NetlinkSender, NetlinkSubscriber
from .unixsock import UnixSender, UnixSubscriber

# errnos that mean "this machine/sandbox has no usable netlink usersock".
_NETLINK_MISSING = (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ESOCKTNOSUPPORT)


def _why_not_netlink(exc: OSError, group: int, doing: str = "joining") -> str | None:
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, PermissionError):
        need = " needs CAP_NET_ADMIN" if doing == "joining" else ""
        return f"netlink not permitted ({name}: {doing} NETLINK_USERSOCK group {group}{need})"
    if exc.errno in _NETLINK_MISSING:
        return f"netlink unavailable ({name}: no NETLINK_USERSOCK here)"
    return None


def subscriber(transport: Transport | str = Transport.AUTO, *, group: int = DEFAULT_GROUP,
               netns: str | None = None, events_dir: Path | str | None = None,
               on_notice: Notice | None = None) -> Subscriber:
    """Listen for events.  Use as a context manager; iterate it or call receive(timeout)."""
    kind = Transport.parse(transport)
    check_group(group)
    events_dir = Path(events_dir) if events_dir is not None else None
    if kind is Transport.UNIX:
        return UnixSubscriber(events_dir, on_notice=on_notice)
    try:
        return NetlinkSubscriber(group, netns=netns, on_notice=on_notice)
    except OSError as exc:
        reason = _why_not_netlink(exc, group)
        if reason is None:
            raise
        if kind is Transport.NETLINK:
            raise type(exc)(exc.errno, reason) from None
    sub = UnixSubscriber(events_dir, on_notice=on_notice)
    sub.fallback_reason = reason
    return sub


def publisher(transport: Transport | str = Transport.AUTO, *, group: int = DEFAULT_GROUP,
              netns: str | None = None, events_dir: Path | str | None = None) -> Publisher:
    """An object with publish(event) -> stamped event, for the host's memory_failure path."""
    kind = Transport.parse(transport)
    check_group(group)
    events_dir = Path(events_dir) if events_dir is not None else None
    senders: list[Sender] = []
    reason = None
    if kind in (Transport.AUTO, Transport.NETLINK):
        try:
            senders.append(NetlinkSender(group, netns=netns))
        except OSError as exc:
            reason = _why_not_netlink(exc, group, "sending to")
            if reason is None:
                raise
            if kind is Transport.NETLINK:
                raise type(exc)(exc.errno, reason) from None
    if kind in (Transport.AUTO, Transport.UNIX):
        senders.append(UnixSender(events_dir))
    return Publisher(senders, fallback_reason=reason)
