"""The struct fast path agrees with the pyroute2 declaration, byte for byte and value for value."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hugepfn.host.events import MalformedMessage, decode, decode_reference, encode, encode_reference

from .conftest import make_event
from .test_message import damaged_st, events_st


@settings(max_examples=200, deadline=None)
@given(events_st(), st.integers(0, 2**32 - 1))
def test_both_codecs_write_the_same_bytes_and_read_the_same_event(event, port_id):
    data = encode(event, port_id=port_id)
    assert data == encode_reference(event, port_id=port_id)
    assert decode(data) == decode_reference(data) == event


def _outcome(codec, data):
    try:
        return codec(data)
    except MalformedMessage:
        return "malformed"


@settings(max_examples=400, deadline=None)
@given(damaged_st(first=20, cut=False))
def test_on_damaged_bytes_the_fast_path_never_reads_what_the_declaration_does_not(damaged):
    fast, reference = _outcome(decode, damaged), _outcome(decode_reference, damaged)
    if fast != "malformed":
        assert fast == reference  # whatever the fast path accepts, pyroute2 reads identically


def _with_extra_attr(data: bytes, attr: bytes) -> bytes:
    out = data + attr
    return struct.pack("<I", len(out)) + out[4:]


def test_an_unknown_attribute_from_a_newer_publisher_is_ignored_by_both():
    data = _with_extra_attr(encode(make_event(1)), struct.pack("<HHI", 8, 99, 7))
    assert decode(data) == decode_reference(data) == make_event(1)


@pytest.mark.parametrize("attr, reason", [
    (struct.pack("<HH", 3, 1), "attribute at offset 268 overruns its container"),
    (struct.pack("<HH", 40, 1), "attribute at offset 268 overruns its container"),
    (b"\x08\x00", "truncated attribute header at offset 268"),
])
def test_broken_attribute_framing_is_named(attr, reason):
    data = _with_extra_attr(encode(make_event(1)), attr)
    assert len(data) - len(attr) == 268
    with pytest.raises(MalformedMessage) as info:
        decode(data)
    assert str(info.value) == f"{reason} ({len(data)} bytes)"


def test_wrong_sized_integer_and_unterminated_string_are_named():
    event = make_event(1)
    data = encode(event)
    pfn = struct.pack("<HHQ", 12, 3, event.pfn)
    short_pfn = data.replace(pfn, struct.pack("<HHI", 8, 3, event.pfn & 0xFFFFFFFF))
    short_pfn = struct.pack("<I", len(short_pfn)) + short_pfn[4:]
    with pytest.raises(MalformedMessage, match=r"^HPFN_MF_A_PFN has 4 bytes, expected 8 \("):
        decode(short_pfn)
    unterminated = data.replace(b"Recovered\0", b"Recovered!")
    with pytest.raises(MalformedMessage, match=r"^HPFN_MF_A_RESULT is not a NUL-terminated ASCII string \("):
        decode(unterminated)
