"""hugepfn.host.events: memory-failure events for userspace, beyond fault and SIGBUS.

After memory_failure() handles a poisoned pfn, the host publishes one
MemoryFailureEvent as a netlink message (pyroute2 message class `hpfn_mf_msg`) on
NETLINK_USERSOCK multicast group 27, and to unix-socket listeners where netlink is
not permitted.  `hugepfn monitor` prints them.  See docs/events.md.

Publishing (the host's memory_failure path)::

    from hugepfn.host import events
    pub = events.publisher()                  # "auto": netlink + unix-fallback listeners
    stamped = pub.publish(events.MemoryFailureEvent(
        pfn=0x3800123, device="0000:01:00.0", bar=2, bar_offset=0x123000,
        granularity=4096, policy="upstream", action="signalled", result="Recovered",
        signals_sent=1, signals=[events.SignalSummary(tid=4242, code=events.BUS_MCEERR_AR,
                                                      addr=0x7f3a00123000)],
        consumption_count=1, profile="6.19"))
    pub.close()

Listening::

    with events.subscriber() as sub:          # falls back to unix; sub.fallback_reason says why
        for event in sub:
            print(event.summary())
"""
from .channel import Publisher, Subscriber
from .event import (BUS_MCEERR_AO, BUS_MCEERR_AR, KNOWN_ACTIONS, MAX_SIGNAL_SUMMARIES, POLICIES,
                    RESULTS, EventError, MemoryFailureEvent, SignalSummary)
from .message import HPFN_MSG_MEMORY_FAILURE, HPFN_MF_VERSION, MalformedMessage, decode, encode, hpfn_mf_msg
from .netlink import DEFAULT_GROUP, NETLINK_USERSOCK
from .transport import Transport, publisher, subscriber
from .unixsock import UnsafeEventsDir, default_events_dir

__all__ = [
    "BUS_MCEERR_AO", "BUS_MCEERR_AR", "DEFAULT_GROUP", "EventError", "HPFN_MF_VERSION",
    "HPFN_MSG_MEMORY_FAILURE", "KNOWN_ACTIONS", "MAX_SIGNAL_SUMMARIES", "MalformedMessage",
    "MemoryFailureEvent", "NETLINK_USERSOCK", "POLICIES", "Publisher", "RESULTS", "SignalSummary",
    "Subscriber", "Transport", "UnsafeEventsDir", "decode", "default_events_dir", "encode",
    "hpfn_mf_msg", "publisher", "subscriber",
]
