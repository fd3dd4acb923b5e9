"""Events over NETLINK_USERSOCK multicast, with pyroute2's netlink socket.

NETLINK_USERSOCK (protocol 2) is the netlink family the kernel reserves for
user-space protocols: no kernel endpoint, 32 multicast groups, messages relayed
by the kernel to every socket that joined the group in the same network namespace.

Permissions (net/netlink/af_netlink.c, the usersock entry): joining a group needs
CAP_NET_ADMIN in the namespace's user namespace (EPERM otherwise); sending to a
group is allowed to anyone.  Because the usersock has no kernel socket, a send
to (port 0, group) is relayed to the group and then reported as ECONNREFUSED for
the unicast half; that error means "delivered to the group" and is ignored.
"""
from __future__ import annotations

import errno
import os
import socket

from pyroute2.netlink.nlsocket import NetlinkSocket

from .channel import Notice, Subscriber
from .constants import DEFAULT_GROUP, NETLINK_ADD_MEMBERSHIP, NETLINK_USERSOCK, SOL_NETLINK, check_group


def _open(netns: str | None) -> tuple[NetlinkSocket, socket.socket]:
    """A bound pyroute2 usersock socket, and a plain socket object sharing its file.

    pyroute2 0.9 keeps its socket per thread (a second thread would silently get a
    new, unbound socket); the dup lets publish() be called from any thread, e.g. the
    host's error-vector thread, while pyroute2 keeps ownership of bind and close.
    `netns` opens the socket inside that named network namespace without moving
    this process (pyroute2 does it in a short-lived child).
    """
    nl = NetlinkSocket(family=NETLINK_USERSOCK, netns=netns)
    try:
        nl.bind()
        raw = socket.socket(fileno=os.dup(nl.fileno()))
    except BaseException:
        nl.close()
        raise
    return nl, raw


class NetlinkSender:
    name = "netlink"

    def __init__(self, group: int = DEFAULT_GROUP, *, netns: str | None = None):
        self.group = check_group(group)
        self.address = f"NETLINK_USERSOCK group {group}" + (f" in netns {netns}" if netns else "")
        self._nl, self._sock = _open(netns)

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, (0, 1 << (self.group - 1)))
        except ConnectionRefusedError:
            pass  # relayed to the group; only the (absent) kernel endpoint refused it
        except BlockingIOError:
            pass  # our send buffer is full: dropped, as a netlink broadcast would be

    def close(self) -> None:
        if self._sock.fileno() != -1:
            self._sock.close()
            self._nl.close()


class NetlinkSubscriber(Subscriber):
    transport = "netlink"

    def __init__(self, group: int = DEFAULT_GROUP, *, netns: str | None = None,
                 on_notice: Notice | None = None):
        check_group(group)
        nl, raw = _open(netns)
        try:
            # After bind: pyroute2's bind briefly runs its event loop, which must not
            # consume an event; from here on only this object reads the socket.
            raw.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            raw.close()
            nl.close()
            raise
        self._nl = nl
        self.group = group
        where = f" in netns {netns}" if netns else ""
        super().__init__(raw, f"NETLINK_USERSOCK group {group}{where}", on_notice=on_notice)

    def _recv_error(self, exc: OSError) -> bool:
        if exc.errno == errno.ENOBUFS:
            # The kernel dropped datagrams because our receive queue was full.
            self.on_notice(f"events lost on {self.describe()}: receive buffer overrun (ENOBUFS)")
            return True
        return False

    def close(self) -> None:
        was_open = self.fileno() != -1
        super().close()
        if was_open:
            self._nl.close()
