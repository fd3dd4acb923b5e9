"""Every vfio-user message, declared once with construct.

Layouts follow QEMU's docs/interop/vfio-user.rst and libvfio-user's
include/vfio-user.h.  All
fields are little-endian and packed; payload offsets start after the 16-byte
header.

construct is the declaration and is used for everything that is not hot.  The
messages on the hot path (the header, REGION_READ/WRITE, DMA_READ/WRITE) also have
a ``struct`` twin (``HEADER``, ``REGION_ACCESS``, ``DMA_ACCESS``) derived from the
declaration by ``fast_codec``, so the two cannot disagree; tests check them byte for
byte all the same.
"""
from __future__ import annotations

import enum
import json
import struct

from construct import (
    Adapter, Array, Bytes, Const, GreedyBytes, Int16ul, Int32sl, Int32ul, Int64ul, Struct, this,
)

from hugepfn.abi.vfio import VFIO_REGION_INFO_FLAG_CAPS
from hugepfn.device.input_limits import nesting_depth


def fast_codec(declaration: Struct) -> struct.Struct:
    """The ``struct`` twin of a construct declaration's fixed-size fields: its leading
    FormatFields (Int16ul, Int64ul...) up to the first variable-size one (GreedyBytes)."""
    codes = []
    for field in declaration.subcons:
        fmtstr = getattr(field.subcon, "fmtstr", None)
        if fmtstr is None:
            break
        if fmtstr[0] != "<":
            raise ValueError(f"{field.name}: not a little-endian field ({fmtstr})")
        codes.append(fmtstr[1:])
    return struct.Struct("<" + "".join(codes))


class Command(enum.IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


# Header flags: bits 0-3 are the message type.
MSG_TYPE_MASK = 0xF
MSG_TYPE_COMMAND = 0
MSG_TYPE_REPLY = 1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20
KNOWN_HEADER_FLAGS = MSG_TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR

# DMA_MAP / DMA_UNMAP flags.
DMA_MAP_FLAG_READ = 1 << 0
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_ALL = 1 << 1

# Region-info capability ids.
REGION_INFO_CAP_SPARSE_MMAP = 1
REGION_INFO_CAP_TYPE = 2

# SET_IRQS flags: one data type and one action.
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_DATA_TYPE_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_TYPE_MASK = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER

# DEVICE_FEATURE flags and feature indexes.
DEVICE_FEATURE_MASK = 0xFFFF
DEVICE_FEATURE_GET = 1 << 16
DEVICE_FEATURE_SET = 1 << 17
DEVICE_FEATURE_PROBE = 1 << 18
FEATURE_MIGRATION = 1
FEATURE_MIG_DEVICE_STATE = 2
FEATURE_DMA_LOGGING_START = 6
FEATURE_DMA_LOGGING_REPORT = 8

HEADER_SIZE = 16

# ---------------------------------------------------------------------------
# Header

Header = Struct(
    "msg_id" / Int16ul,
    "cmd" / Int16ul,
    "msg_size" / Int32ul,      # whole message, header included
    "flags" / Int32ul,
    "error_no" / Int32ul,
)
HEADER = fast_codec(Header)


# ---------------------------------------------------------------------------
# VERSION: u16 major, u16 minor, then an optional NUL-terminated JSON object.

# json-c, which libvfio-user parses VERSION with, refuses documents nested deeper than
# JSON_TOKENER_DEFAULT_DEPTH (32); the same bound here also keeps a hostile document
# thousands of levels deep from reaching Python's recursion limit.
MAX_JSON_DEPTH = 32


class NulTerminatedJson(Adapter):
    """The capabilities text: absent (None) or a JSON object followed by one NUL."""

    def _decode(self, obj: bytes, context, path):
        if not obj:
            return None
        if not obj.endswith(b"\0") or b"\0" in obj[:-1]:
            raise ValueError("capabilities JSON is not NUL-terminated")
        too_deep = ValueError(f"capabilities JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            value = json.loads(obj[:-1].decode("utf-8"))
        except RecursionError:
            raise too_deep from None
        if nesting_depth(value) > MAX_JSON_DEPTH:
            raise too_deep
        if not isinstance(value, dict):
            raise ValueError("capabilities JSON is not an object")
        return value

    def _encode(self, obj, context, path):
        if obj is None:
            return b""
        return json.dumps(obj, separators=(",", ":")).encode() + b"\0"


Version = Struct(
    "major" / Int16ul,
    "minor" / Int16ul,
    "capabilities" / NulTerminatedJson(GreedyBytes),
)

# ---------------------------------------------------------------------------
# DMA

DmaMap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "offset" / Int64ul,     # offset into the passed fd
    "address" / Int64ul,    # IOVA (guest physical address)
    "size" / Int64ul,
)

DmaUnmap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "address" / Int64ul,
    "size" / Int64ul,
)

# Server -> client.  libvfio-user's layout (u64 count; QEMU's client declares a 32-bit count).
DmaAccess = Struct(
    "address" / Int64ul,
    "count" / Int64ul,
    "data" / GreedyBytes,
)
DMA_ACCESS = fast_codec(DmaAccess)

# ---------------------------------------------------------------------------
# Device, regions, IRQs

DeviceInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "num_regions" / Int32ul,
    "num_irqs" / Int32ul,
)

RegionInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "cap_offset" / Int32ul,   # from the start of this struct; 0 = no chain
    "size" / Int64ul,
    "offset" / Int64ul,       # base offset of the region in its fd
)
REGION_INFO_SIZE = RegionInfo.sizeof()

CapHeader = Struct(
    "id" / Int16ul,
    "version" / Int16ul,
    "next" / Int32ul,         # from the start of the region-info struct; 0 ends the chain
)
CAP_HEADER_SIZE = CapHeader.sizeof()

SparseMmapArea = Struct(
    "offset" / Int64ul,
    "size" / Int64ul,
)

SparseMmapCap = Struct(
    "header" / CapHeader,
    "nr_areas" / Int32ul,
    "reserved" / Int32ul,
    "areas" / Array(this.nr_areas, SparseMmapArea),
)
SPARSE_MMAP_CAP_FIXED = CAP_HEADER_SIZE + 8

TypeCap = Struct(
    "header" / CapHeader,
    "type" / Int32ul,
    "subtype" / Int32ul,
)

IoFdSubRegion = Struct(
    "offset" / Int64ul,
    "size" / Int64ul,
    "fd_index" / Int32ul,
    "type" / Int32ul,         # 0 ioeventfd, 1 ioregionfd
    "flags" / Int32ul,        # KVM_IOEVENTFD_FLAG_*
    "padding" / Int32ul,
    "datamatch" / Int64ul,
)

RegionIoFdsRequest = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "count" / Int32ul,        # 0 in a request
)

RegionIoFds = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "count" / Int32ul,
    "sub_regions" / Array(this.count, IoFdSubRegion),
)
REGION_IO_FDS_FIXED = 16

IrqInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "count" / Int32ul,
)

SetIrqs = Struct(
    "argsz" / Int32ul,        # whole payload including data
    "flags" / Int32ul,
    "index" / Int32ul,
    "start" / Int32ul,
    "count" / Int32ul,
    "data" / GreedyBytes,     # DATA_BOOL: count bytes; otherwise empty
)
SET_IRQS_FIXED = 20

# ---------------------------------------------------------------------------
# Region access (hot path)

RegionAccess = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / GreedyBytes,     # REGION_WRITE request and REGION_READ reply
)
REGION_ACCESS = fast_codec(RegionAccess)  # its fixed part

RegionWriteMultiEntry = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / Bytes(8),
)

RegionWriteMulti = Struct(
    "wr_cnt" / Int64ul,
    "writes" / Array(this.wr_cnt, RegionWriteMultiEntry),
)

# ---------------------------------------------------------------------------
# DEVICE_FEATURE and migration

DeviceFeature = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,        # feature index in bits 0-15, GET/SET/PROBE above
    "data" / GreedyBytes,
)
DEVICE_FEATURE_FIXED = 8

MigrationFeature = Struct("flags" / Int64ul)

MigDeviceStateFeature = Struct(
    "device_state" / Int32ul,
    "data_fd" / Int32sl,
)

DmaLoggingRange = Struct("iova" / Int64ul, "length" / Int64ul)

DmaLoggingControl = Struct(
    "page_size" / Int64ul,
    "num_ranges" / Int32ul,
    "reserved" / Const(0, Int32ul),
    "ranges" / Array(this.num_ranges, DmaLoggingRange),
)

DmaLoggingReport = Struct(
    "iova" / Int64ul,
    "length" / Int64ul,
    "page_size" / Int64ul,
    "bitmap" / GreedyBytes,
)

MigDataRead = Struct(
    "argsz" / Int32ul,
    "size" / Int32ul,
    "data" / GreedyBytes,     # reply only
)

MigDataWrite = Struct(
    "argsz" / Int32ul,
    "size" / Int32ul,
    "data" / GreedyBytes,
)


# ---------------------------------------------------------------------------
# Helpers shared by server and client

def pack_header(msg_id: int, cmd: int, payload_size: int, flags: int = 0, error_no: int = 0) -> bytes:
    return HEADER.pack(msg_id & 0xFFFF, cmd, HEADER_SIZE + payload_size, flags, error_no)


def message(msg_id: int, cmd: int, payload: bytes = b"", flags: int = 0, error_no: int = 0) -> bytes:
    """A whole message: header followed by ``payload``."""
    return pack_header(msg_id, cmd, len(payload), flags, error_no) + payload


def build_region_info(index: int, size: int, flags: int, fd_offset: int,
                      sparse_areas: list[tuple[int, int]] | None,
                      type_cap: tuple[int, int] | None = None) -> bytes:
    """The full DEVICE_GET_REGION_INFO reply payload: the struct and its cap chain.

    ``argsz`` is the full length; CAPS is set when a chain is present.
    """
    caps: list[bytes] = []
    position = REGION_INFO_SIZE
    bodies: list[tuple[int, dict]] = []
    if sparse_areas is not None:
        bodies.append((REGION_INFO_CAP_SPARSE_MMAP, {"nr_areas": len(sparse_areas), "reserved": 0,
                       "areas": [{"offset": o, "size": s} for o, s in sparse_areas]}))
    if type_cap is not None:
        bodies.append((REGION_INFO_CAP_TYPE, {"type": type_cap[0], "subtype": type_cap[1]}))
    for n, (cap_id, body) in enumerate(bodies):
        fmt = SparseMmapCap if cap_id == REGION_INFO_CAP_SPARSE_MMAP else TypeCap
        length = len(fmt.build({"header": {"id": cap_id, "version": 1, "next": 0}, **body}))
        nxt = position + length if n + 1 < len(bodies) else 0
        caps.append(fmt.build({"header": {"id": cap_id, "version": 1, "next": nxt}, **body}))
        position += length
    chain = b"".join(caps)
    if chain:
        flags |= VFIO_REGION_INFO_FLAG_CAPS
    fixed = RegionInfo.build({"argsz": REGION_INFO_SIZE + len(chain), "flags": flags, "index": index,
                              "cap_offset": REGION_INFO_SIZE if chain else 0,
                              "size": size, "offset": fd_offset})
    return fixed + chain


def parse_region_info_caps(payload: bytes) -> dict[int, object]:
    """Walk the cap chain of a region-info reply; returns {cap id: parsed cap}.

    Every offset is bounds-checked and must move forward, so a hostile chain cannot
    loop or read outside the payload.  Raises ValueError on a bad chain.
    """
    info = RegionInfo.parse(payload[:REGION_INFO_SIZE])
    caps: dict[int, object] = {}
    if not info.flags & VFIO_REGION_INFO_FLAG_CAPS:
        return caps
    offset = info.cap_offset
    last = REGION_INFO_SIZE - 1
    while offset:
        if offset <= last or offset + CAP_HEADER_SIZE > len(payload):
            raise ValueError(f"cap chain offset {offset} out of bounds")
        head = CapHeader.parse(payload[offset:offset + CAP_HEADER_SIZE])
        body = payload[offset:]
        if head.id == REGION_INFO_CAP_SPARSE_MMAP:
            if len(body) < SPARSE_MMAP_CAP_FIXED:
                raise ValueError("truncated sparse-mmap cap")
            nr = Int32ul.parse(body[CAP_HEADER_SIZE:CAP_HEADER_SIZE + 4])
            if SPARSE_MMAP_CAP_FIXED + 16 * nr > len(body):
                raise ValueError("sparse-mmap cap areas run past the reply")
            caps[head.id] = SparseMmapCap.parse(body)
        elif head.id == REGION_INFO_CAP_TYPE:
            caps[head.id] = TypeCap.parse(body)
        last = offset
        offset = head.next
    return caps
