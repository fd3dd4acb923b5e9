"""Round trips of every construct declaration, and the struct fast paths agreeing with them."""
from __future__ import annotations

import pytest
from construct import Container
from hypothesis import given, settings
from hypothesis import strategies as st

from hugepfn.abi import vfio_user as wire

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)


def _plain(value):
    """construct Containers/ListContainers -> dicts/lists without the _io key."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


SAMPLES = [
    (wire.Header, {"msg_id": 7, "cmd": 9, "msg_size": 32, "flags": 1, "error_no": 22}),
    (wire.Version, {"major": 0, "minor": 2, "capabilities": {"capabilities": {"max_msg_fds": 8}}}),
    (wire.Version, {"major": 0, "minor": 0, "capabilities": None}),
    (wire.DmaMap, {"argsz": 32, "flags": 3, "offset": 0x1000, "address": 1 << 40, "size": 1 << 30}),
    (wire.DmaUnmap, {"argsz": 24, "flags": 2, "address": 0, "size": 0}),
    (wire.DmaAccess, {"address": 0xFEE0_0000, "count": 4, "data": b"abcd"}),
    (wire.DeviceInfo, {"argsz": 16, "flags": 3, "num_regions": 9, "num_irqs": 5}),
    (wire.RegionInfo, {"argsz": 64, "flags": 15, "index": 2, "cap_offset": 32, "size": 8 << 30,
                       "offset": 0}),
    (wire.CapHeader, {"id": 1, "version": 1, "next": 0}),
    (wire.SparseMmapCap, {"header": {"id": 1, "version": 1, "next": 0}, "nr_areas": 2, "reserved": 0,
                          "areas": [{"offset": 0, "size": 4096}, {"offset": 8192, "size": 1 << 33}]}),
    (wire.TypeCap, {"header": {"id": 2, "version": 1, "next": 0}, "type": 0x8086, "subtype": 1}),
    (wire.RegionIoFdsRequest, {"argsz": 16, "flags": 0, "index": 0, "count": 0}),
    (wire.RegionIoFds, {"argsz": 56, "flags": 0, "index": 0, "count": 1,
                        "sub_regions": [{"offset": 0x100, "size": 4, "fd_index": 0, "type": 0, "flags": 1,
                                         "padding": 0, "datamatch": 7}]}),
    (wire.IrqInfo, {"argsz": 16, "flags": 1, "index": 2, "count": 64}),
    (wire.SetIrqs, {"argsz": 22, "flags": 0x22, "index": 2, "start": 0, "count": 2, "data": b"\x01\x00"}),
    (wire.RegionAccess, {"offset": 0x10, "region": 7, "count": 4, "data": b"\xff\xff\xff\xff"}),
    (wire.RegionWriteMulti, {"wr_cnt": 1, "writes": [{"offset": 8, "region": 0, "count": 4,
                                                       "data": b"12345678"}]}),
    (wire.DeviceFeature, {"argsz": 16, "flags": (1 << 16) | 1, "data": b"\0" * 8}),
    (wire.MigrationFeature, {"flags": 5}),
    (wire.MigDeviceStateFeature, {"device_state": 2, "data_fd": -1}),
    (wire.DmaLoggingControl, {"page_size": 4096, "num_ranges": 1, "reserved": 0,
                              "ranges": [{"iova": 0, "length": 1 << 20}]}),
    (wire.DmaLoggingReport, {"iova": 0, "length": 1 << 20, "page_size": 4096, "bitmap": b"\xff" * 32}),
    (wire.MigDataRead, {"argsz": 8, "size": 4096, "data": b""}),
    (wire.MigDataWrite, {"argsz": 12, "size": 4, "data": b"abcd"}),
]


@pytest.mark.parametrize("fmt,value", SAMPLES, ids=[f"{s[0].__class__.__name__}-{i}"
                                                     for i, s in enumerate(SAMPLES)])
def test_round_trip(fmt, value):
    raw = fmt.build(value)
    parsed = fmt.parse(raw)
    assert _plain(parsed) == value
    assert fmt.build(parsed) == raw


def test_fixed_sizes_match_the_protocol():
    assert wire.Header.sizeof() == 16
    assert wire.DmaMap.sizeof() == 32
    assert wire.DmaUnmap.sizeof() == 24
    assert wire.DeviceInfo.sizeof() == 16
    assert wire.RegionInfo.sizeof() == 32
    assert wire.IrqInfo.sizeof() == 16
    assert wire.IoFdSubRegion.sizeof() == 40
    assert len(wire.SetIrqs.build({"argsz": 20, "flags": 0, "index": 0, "start": 0, "count": 0,
                                   "data": b""})) == wire.SET_IRQS_FIXED


def test_version_json_is_nul_terminated_and_rejects_missing_nul():
    raw = wire.Version.build({"major": 0, "minor": 0, "capabilities": {"capabilities": {}}})
    assert raw == b"\0\0\0\0" + b'{"capabilities":{}}\0'
    with pytest.raises(ValueError):
        wire.Version.parse(b"\0\0\0\0{}")
    with pytest.raises(ValueError):
        wire.Version.parse(b"\0\0\0\0[1]\0")


@settings(max_examples=300, deadline=None)
@given(u16, u16, u32, u32, u32)
def test_header_fast_path_agrees_with_construct(msg_id, cmd, size, flags, err):
    fields = {"msg_id": msg_id, "cmd": cmd, "msg_size": size, "flags": flags, "error_no": err}
    raw = wire.HEADER.pack(msg_id, cmd, size, flags, err)
    assert raw == wire.Header.build(fields)
    assert _plain(wire.Header.parse(raw)) == fields
    assert wire.HEADER.unpack(wire.Header.build(fields)) == (msg_id, cmd, size, flags, err)


@settings(max_examples=300, deadline=None)
@given(u64, u32, st.binary(max_size=64))
def test_region_access_fast_path_agrees_with_construct(offset, region, data):
    raw = wire.REGION_ACCESS.pack(offset, region, len(data)) + data
    assert raw == wire.RegionAccess.build({"offset": offset, "region": region, "count": len(data),
                                           "data": data})
    parsed = wire.RegionAccess.parse(raw)
    assert (parsed.offset, parsed.region, parsed.count, parsed.data) == (offset, region, len(data), data)
    assert wire.REGION_ACCESS.unpack_from(raw) == (offset, region, len(data))


def test_dma_access_fast_path_agrees_with_construct():
    raw = wire.DMA_ACCESS.pack(0x1234_0000, 8)
    assert raw == wire.DmaAccess.build({"address": 0x1234_0000, "count": 8, "data": b""})


def test_region_info_with_sparse_and_type_caps_round_trips():
    payload = wire.build_region_info(2, 8 << 30, 0x7, 0, [(0x1000, (8 << 30) - 0x1000)], type_cap=(1, 2))
    info = wire.RegionInfo.parse(payload)
    assert info.argsz == len(payload) == 32 + 32 + 16
    assert info.flags == 0xF and info.cap_offset == 32
    caps = wire.parse_region_info_caps(payload)
    assert [(a.offset, a.size) for a in caps[wire.REGION_INFO_CAP_SPARSE_MMAP].areas] == \
        [(0x1000, (8 << 30) - 0x1000)]
    assert caps[wire.REGION_INFO_CAP_SPARSE_MMAP].header.next == 64
    assert (caps[wire.REGION_INFO_CAP_TYPE].type, caps[wire.REGION_INFO_CAP_TYPE].subtype) == (1, 2)


def test_region_info_without_caps_has_no_chain():
    payload = wire.build_region_info(7, 4096, 3, 0, None)
    assert payload == wire.RegionInfo.build({"argsz": 32, "flags": 3, "index": 7, "cap_offset": 0,
                                             "size": 4096, "offset": 0})
    assert wire.parse_region_info_caps(payload) == {}


@pytest.mark.parametrize("cap_offset,next_offset", [(8, 0), (32, 32), (1000, 0), (32, 16)])
def test_hostile_cap_chains_are_rejected(cap_offset, next_offset):
    fixed = wire.RegionInfo.build({"argsz": 56, "flags": 8, "index": 2, "cap_offset": cap_offset,
                                   "size": 4096, "offset": 0})
    cap = wire.SparseMmapCap.build({"header": {"id": 1, "version": 1, "next": next_offset},
                                    "nr_areas": 1, "reserved": 0, "areas": [{"offset": 0, "size": 4096}]})
    with pytest.raises(ValueError):
        wire.parse_region_info_caps(fixed + cap)


def test_sparse_cap_claiming_more_areas_than_sent_is_rejected():
    fixed = wire.RegionInfo.build({"argsz": 56, "flags": 8, "index": 2, "cap_offset": 32,
                                   "size": 4096, "offset": 0})
    cap = wire.CapHeader.build({"id": 1, "version": 1, "next": 0}) + (1000).to_bytes(4, "little") + bytes(4)
    with pytest.raises(ValueError, match="run past"):
        wire.parse_region_info_caps(fixed + cap)


def test_message_helper_builds_header_plus_payload():
    msg = wire.message(5, wire.Command.REGION_READ, b"x" * 16, wire.MSG_TYPE_REPLY)
    assert wire.HEADER.unpack_from(msg) == (5, 9, 32, 1, 0)
    assert isinstance(wire.Header.parse(msg), Container)
