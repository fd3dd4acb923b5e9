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
import importlib

# Exports load on first use (PEP 562): pyroute2 costs ~0.2 s to import, and every
# `hugepfn` command imports the monitor's parser, which needs only `constants`.
_EXPORTS = {
    "constants": ("DEFAULT_GROUP", "NETLINK_USERSOCK", "Transport", "default_events_dir"),
    "event": ("BUS_MCEERR_AO", "BUS_MCEERR_AR", "EventError", "KNOWN_ACTIONS", "MAX_SIGNAL_SUMMARIES",
              "MemoryFailureEvent", "POLICIES", "RESULTS", "SignalSummary"),
    "message": ("HPFN_MF_VERSION", "HPFN_MSG_MEMORY_FAILURE", "MalformedMessage", "decode_reference",
                "encode_reference", "hpfn_mf_msg"),
    "fastpath": ("decode", "encode"),
    "channel": ("Publisher", "Subscriber"),
    "transport": ("publisher", "subscriber"),
    "unixsock": ("UnsafeEventsDir",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
