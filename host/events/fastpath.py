"""`struct` codec for hpfn_mf_msg, compiled from the pyroute2 declaration.

pyroute2 builds and parses a message in ~0.3 ms (several ms with 64 signals); the
host publishes from its memory_failure path, so `encode`/`decode` use this fast path
and `message.encode_reference`/`decode_reference` stay the reference.  The tables
below are read from `hpfn_mf_msg.nla_map`, never written twice, and
tests/events/test_fastpath.py checks both codecs agree byte for byte.
"""
from __future__ import annotations

import struct

from .event import MemoryFailureEvent
from .message import (HPFN_MF_VERSION, HPFN_MSG_MEMORY_FAILURE, NLMSG_HDRLEN, MalformedMessage, attribute_spans,
                      build_event, check_header, check_stamped, header_pid, hpfn_mf_msg)

NLA_F_NESTED = 0x8000
_NLMSGHDR = struct.Struct("<IHHII")
_HPFN_MF = struct.Struct("<B3x")
_NLA = struct.Struct("<HH")
_INTS = {"uint8": struct.Struct("<B"), "uint32": struct.Struct("<I"), "uint64": struct.Struct("<Q")}


def _table(nla_map, prefix: str) -> dict[int, tuple[str, str, object]]:
    """type number -> (field key, attribute name, struct.Struct | "asciiz" | "array")."""
    table = {}
    for number, name, kind in nla_map:
        if kind == "none":
            continue
        codec = "array" if kind.startswith("*") else "asciiz" if kind == "asciiz" else _INTS[kind]
        table[number] = (name.removeprefix(prefix).lower(), name, codec)
    return table


_TOP = _table(hpfn_mf_msg.nla_map, "HPFN_MF_A_")
_SIG = _table(hpfn_mf_msg.signal.nla_map, "HPFN_MF_SIG_")


def _nla(nla_type: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, nla_type) + payload + b"\0" * (-length % 4)


def _encode_attrs(table, value_of) -> bytes:
    out = []
    for number, (key, _name, codec) in table.items():  # declaration order = type order
        value = value_of(key)
        if codec == "asciiz":
            out.append(_nla(number, value.encode("ascii") + b"\0"))
        elif codec == "array":
            if value:
                elements = (_nla((i + 1) | NLA_F_NESTED, _encode_attrs(_SIG, lambda k, s=sig: getattr(s, k)))
                            for i, sig in enumerate(value))
                out.append(_nla(number | NLA_F_NESTED, b"".join(elements)))
        else:
            out.append(_nla(number, codec.pack(value)))
    return b"".join(out)


def encode(event: MemoryFailureEvent, *, port_id: int = 0) -> bytes:
    """The netlink message for a stamped event (seq and timestamp set)."""
    check_stamped(event)
    body = _HPFN_MF.pack(HPFN_MF_VERSION) + _encode_attrs(_TOP, lambda key: getattr(event, key))
    header = _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), HPFN_MSG_MEMORY_FAILURE, 0,
                            event.seq & 0xFFFFFFFF, port_id)
    return header + body


def _decode_attrs(table, data: bytes, start: int, end: int, size: int) -> tuple[dict, list]:
    values: dict = {key: None for key, _name, _codec in table.values()}
    signals: list[dict] = []
    for nla_type, first, last in attribute_spans(data, start, end, size):
        if nla_type not in table:
            continue  # a newer publisher's attribute: ignore, as netlink readers do
        key, name, codec = table[nla_type]
        if values[key] is not None:
            continue  # repeated attribute: the first one counts (as pyroute2's get_attr)
        if codec == "array":       # offsets in the reasons stay those of the datagram
            signals = [_decode_attrs(_SIG, data, element_first, element_last, size)[0]
                       for _type, element_first, element_last in attribute_spans(data, first, last, size)]
            values[key] = True  # seen; the list itself is returned apart
            continue
        payload = data[first:last]
        if codec == "asciiz":
            if not payload.endswith(b"\0") or not payload[:-1].isascii() or b"\0" in payload[:-1]:
                raise MalformedMessage(f"{name} is not a NUL-terminated ASCII string", size)
            values[key] = payload[:-1].decode("ascii")
        else:
            if len(payload) != codec.size:
                raise MalformedMessage(f"{name} has {len(payload)} bytes, expected {codec.size}", size)
            values[key] = codec.unpack(payload)[0]
    return values, signals


def decode(data: bytes) -> MemoryFailureEvent:
    """The event in one datagram; MalformedMessage (one-line reason) for anything else."""
    size = check_header(data)
    data = bytes(data)
    values, signals = _decode_attrs(_TOP, data, NLMSG_HDRLEN + _HPFN_MF.size, size, size)
    values.pop("signals", None)
    return build_event(values, signals, size, header_pid(data))
