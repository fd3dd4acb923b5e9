"""Wire format of a memory-failure event: a netlink message declared with pyroute2.

    struct nlmsghdr   (16 bytes: length, type=HPFN_MSG_MEMORY_FAILURE, flags=0, seq, pid)
    struct hpfn_mf    (4 bytes: version=1, 3 bytes reserved)
    NLA chain         (HPFN_MF_A_* below; attribute type numbers are ABI and never reused)

The same bytes travel over NETLINK_USERSOCK multicast and over the unix-socket
fallback, one message per datagram.  docs/events.md documents the layout for
readers that do not use Python.
"""
from __future__ import annotations

import struct

from pyroute2.netlink import nla, nlmsg

from .event import EventError, MemoryFailureEvent, SignalSummary

# nlmsg_type of an event.  Types below NLMSG_MIN_TYPE (0x10) are netlink control
# messages; 0x4846 is "HF" and keeps clear of them.
HPFN_MSG_MEMORY_FAILURE = 0x4846
HPFN_MF_VERSION = 1
NLMSG_HDRLEN = 16
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NLA = struct.Struct("<HH")
_HPFN_MF_SIZE = 4


class hpfn_mf_msg(nlmsg):
    """One memory-failure event (kernel-style name: it is the netlink struct)."""

    fields = (("version", "B"), ("__pad", "3x"))
    # Explicit type numbers: a reader built against this table keeps working when
    # attributes are appended.
    nla_map = (
        (0, "HPFN_MF_A_UNSPEC", "none"),
        (1, "HPFN_MF_A_SEQ", "uint64"),
        (2, "HPFN_MF_A_TIMESTAMP_NS", "uint64"),
        (3, "HPFN_MF_A_PFN", "uint64"),
        (4, "HPFN_MF_A_DEVICE", "asciiz"),
        (5, "HPFN_MF_A_BAR", "uint8"),
        (6, "HPFN_MF_A_BAR_OFFSET", "uint64"),
        (7, "HPFN_MF_A_GRANULARITY", "uint64"),
        (8, "HPFN_MF_A_POLICY", "asciiz"),
        (9, "HPFN_MF_A_ACTION", "asciiz"),
        (10, "HPFN_MF_A_RESULT", "asciiz"),
        (11, "HPFN_MF_A_SIGNALS_SENT", "uint32"),
        (12, "HPFN_MF_A_SIGNALS", "*signal|nested"),  # array: NLA_F_NESTED set
        (13, "HPFN_MF_A_CONSUMPTION_COUNT", "uint32"),
        (14, "HPFN_MF_A_PROFILE", "asciiz"),
    )

    class signal(nla):
        """One SIGBUS summary, an element of the HPFN_MF_A_SIGNALS array."""

        nla_map = (
            (0, "HPFN_MF_SIG_UNSPEC", "none"),
            (1, "HPFN_MF_SIG_TID", "uint32"),
            (2, "HPFN_MF_SIG_CODE", "uint32"),
            (3, "HPFN_MF_SIG_ADDR", "uint64"),
            (4, "HPFN_MF_SIG_LSB", "uint8"),
        )


# event field -> attribute, derived from the declaration (HPFN_MF_A_<FIELD>), in
# type order; the signals array is handled apart.
def _field_map(nla_map, prefix: str, skip: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name.removeprefix(prefix).lower(), name)
                 for _number, name, _kind in nla_map if name not in skip)


_SCALARS = _field_map(hpfn_mf_msg.nla_map, "HPFN_MF_A_", ("HPFN_MF_A_UNSPEC", "HPFN_MF_A_SIGNALS"))
_SIGNAL_FIELDS = _field_map(hpfn_mf_msg.signal.nla_map, "HPFN_MF_SIG_", ("HPFN_MF_SIG_UNSPEC",))
# Attributes an event cannot be rebuilt without; the rest have dataclass defaults.
_REQUIRED = {"seq", "timestamp_ns", "pfn", "device", "bar", "bar_offset", "granularity",
             "policy", "action", "result"}


class MalformedMessage(ValueError):
    """A datagram on the event channel that is not a valid hugepfn event."""

    def __init__(self, reason: str, size: int):
        super().__init__(f"{reason} ({size} bytes)")
        self.reason = reason
        self.size = size


def encode_reference(event: MemoryFailureEvent, *, port_id: int = 0) -> bytes:
    """Encode with pyroute2 from the declaration (the reference; `encode` is the fast path)."""
    check_stamped(event)
    msg = hpfn_mf_msg()
    msg["header"]["type"] = HPFN_MSG_MEMORY_FAILURE
    msg["header"]["flags"] = 0
    # The header seq is 32 bits; the full 64-bit seq rides in HPFN_MF_A_SEQ.
    msg["header"]["sequence_number"] = event.seq & 0xFFFFFFFF
    msg["header"]["pid"] = port_id
    msg["version"] = HPFN_MF_VERSION
    attrs = []
    for key, name in _SCALARS:
        attrs.append((name, getattr(event, key)))
        if key == "signals_sent" and event.signals:  # keep attributes in type order
            attrs.append(("HPFN_MF_A_SIGNALS", [
                {"attrs": [(sig_name, getattr(sig, sig_key)) for sig_key, sig_name in _SIGNAL_FIELDS]}
                for sig in event.signals
            ]))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def decode_reference(data: bytes) -> MemoryFailureEvent:
    """Decode with pyroute2 from the declaration (the reference; `decode` is the fast path).
    The attribute framing is checked first: pyroute2 trusts the lengths, and some damaged
    lengths make it allocate without bound (a 17 GB test process before this check)."""
    size = check_header(data)
    data = bytes(data)
    check_framing(data, size)
    try:
        msg = hpfn_mf_msg(data)
        msg.decode()
        values = {key: msg.get_attr(name) for key, name in _SCALARS}
        signals = [{key: sig.get_attr(name) for key, name in _SIGNAL_FIELDS}
                   for sig in msg.get_attr("HPFN_MF_A_SIGNALS") or []]
    except Exception as exc:  # pyroute2 raises assorted types on damaged attributes
        raise MalformedMessage(f"undecodable attributes: {type(exc).__name__}: {exc}", size) from None
    return build_event(values, signals, size, header_pid(data))


# -- checks shared by the reference codec and the struct fast path (fastpath.py) --------

def check_stamped(event: MemoryFailureEvent) -> None:
    if event.seq is None or event.timestamp_ns is None:
        raise EventError("only a stamped event (seq and timestamp_ns set) can be encoded")


def attribute_spans(data: bytes, start: int, end: int, size: int):
    """(type without flags, payload start, payload end) of each attribute in data[start:end];
    MalformedMessage when a header is cut short or a length leaves its container."""
    offset = start
    while offset < end:
        if end - offset < _NLA.size:
            raise MalformedMessage(f"truncated attribute header at offset {offset}", size)
        length, nla_type = _NLA.unpack_from(data, offset)
        if length < _NLA.size or offset + length > end:
            raise MalformedMessage(f"attribute at offset {offset} overruns its container", size)
        yield nla_type & NLA_TYPE_MASK, offset + _NLA.size, offset + length
        offset += (length + 3) & ~3


# The attribute types the declaration decodes as an array of nested attribute sets.
_ARRAYS = frozenset(number for number, _name, kind in hpfn_mf_msg.nla_map if kind.startswith("*"))


def check_framing(data: bytes, size: int) -> None:
    """Every attribute at every level the declaration nests (the top level, each array, each
    element of it) has a whole header and stays inside its container."""
    for nla_type, start, end in attribute_spans(data, NLMSG_HDRLEN + _HPFN_MF_SIZE, size, size):
        if nla_type in _ARRAYS:
            for _element, first, last in attribute_spans(data, start, end, size):
                for _attr in attribute_spans(data, first, last, size):
                    pass


def check_header(data: bytes) -> int:
    """Validate nlmsghdr + hpfn_mf; returns the datagram size."""
    size = len(data)
    if size < NLMSG_HDRLEN + 4:
        raise MalformedMessage("too short for a netlink header and hpfn_mf header", size)
    length = int.from_bytes(data[0:4], "little")
    mtype = int.from_bytes(data[4:6], "little")
    if mtype != HPFN_MSG_MEMORY_FAILURE:
        raise MalformedMessage(f"not a hugepfn event (nlmsg_type {mtype:#x})", size)
    if length != size:
        raise MalformedMessage(f"nlmsg_len {length} does not match the datagram", size)
    if data[NLMSG_HDRLEN] != HPFN_MF_VERSION:
        raise MalformedMessage(f"unsupported hpfn_mf version {data[NLMSG_HDRLEN]}", size)
    return size


def header_pid(data: bytes) -> int:
    """nlmsg_pid: the publisher's process id (after check_header)."""
    return int.from_bytes(data[12:16], "little")


def build_event(values: dict, signals: list[dict], size: int, publisher_pid: int | None = None) -> MemoryFailureEvent:
    """The event from decoded attribute values (None = absent)."""
    missing = sorted(key for key in _REQUIRED if values.get(key) is None)
    if missing:
        raise MalformedMessage(f"missing attributes: {', '.join(missing)}", size)
    present = {key: value for key, value in values.items() if value is not None}
    try:
        return MemoryFailureEvent(**present, signals=tuple(SignalSummary(**s) for s in signals),
                                  publisher_pid=publisher_pid)
    except (EventError, TypeError) as exc:
        raise MalformedMessage(f"invalid event: {exc}", size) from None
