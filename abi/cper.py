"""Error records of the BAR0 error queue: a small device header + a UEFI CPER
Platform Memory Error section (UEFI spec appendix N.2.5; Linux ``struct cper_sec_mem_err``).

The section's physical address is a *device physical address* (DPA): the memory BAR's
``dpa_base`` plus the offset inside the BAR.  The host, which assigned the BAR's bus
address, translates (see docs/device.md).  ``physical_addr_mask`` gives the error
granularity the way firmware does: ``~(granularity - 1)``; Linux ghes derives the
affected range from its lowest set bit.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

CPER_SEC_PLATFORM_MEM = uuid.UUID("a5bc1114-6f64-4ede-b863-3e83ed7c83b1")

# CPER section severities.
CPER_SEV_RECOVERABLE = 0
CPER_SEV_FATAL = 1
CPER_SEV_CORRECTED = 2
CPER_SEV_INFORMATIONAL = 3

# validation_bits of the memory error section.
CPER_MEM_VALID_ERROR_STATUS = 0x0001
CPER_MEM_VALID_PA = 0x0002
CPER_MEM_VALID_PA_MASK = 0x0004
CPER_MEM_VALID_NODE = 0x0008
CPER_MEM_VALID_CARD = 0x0010
CPER_MEM_VALID_MODULE = 0x0020
CPER_MEM_VALID_BANK = 0x0040
CPER_MEM_VALID_ROW = 0x0100
CPER_MEM_VALID_COLUMN = 0x0200
CPER_MEM_VALID_ERROR_TYPE = 0x4000

# Memory error types (UEFI table "Memory Error Record", field Memory Error Type).
CPER_MEM_ERR_UNKNOWN = 0
CPER_MEM_ERR_SINGLE_ECC = 2
CPER_MEM_ERR_MULTI_ECC = 3
CPER_MEM_ERR_SINGLE_SYMBOL_CHIPKILL = 4
CPER_MEM_ERR_MULTI_SYMBOL_CHIPKILL = 5
CPER_MEM_ERR_PARITY = 8
CPER_MEM_ERR_SCRUB_UNCORRECTED = 14
CPER_MEM_ERR_MAP_OUT = 15
MEMORY_ERROR_TYPES = {
    "unknown": CPER_MEM_ERR_UNKNOWN, "single-ecc": CPER_MEM_ERR_SINGLE_ECC,
    "multi-ecc": CPER_MEM_ERR_MULTI_ECC, "single-symbol-chipkill": CPER_MEM_ERR_SINGLE_SYMBOL_CHIPKILL,
    "multi-symbol-chipkill": CPER_MEM_ERR_MULTI_SYMBOL_CHIPKILL, "parity": CPER_MEM_ERR_PARITY,
    "scrub-uncorrected": CPER_MEM_ERR_SCRUB_UNCORRECTED, "map-out": CPER_MEM_ERR_MAP_OUT,
}

# Generic Error Status (UEFI "Error Status" block): error type ERR_MEM in bits 8..15, Data bit 18.
ERR_STATUS_ERR_MEM = 4 << 8
ERR_STATUS_DATA = 1 << 18

MemErrorSection = Struct(              # 80 bytes
    "validation_bits" / Int64ul,
    "error_status" / Int64ul,
    "physical_addr" / Int64ul,
    "physical_addr_mask" / Int64ul,
    "node" / Int16ul,
    "card" / Int16ul,
    "module" / Int16ul,
    "bank" / Int16ul,
    "device" / Int16ul,
    "row" / Int16ul,
    "column" / Int16ul,
    "bit_pos" / Int16ul,
    "requestor_id" / Int64ul,
    "responder_id" / Int64ul,
    "target_id" / Int64ul,
    "error_type" / Int8ul,
    "extended" / Int8ul,
    "rank" / Int16ul,
    "mem_array_handle" / Int16ul,
    "mem_dev_handle" / Int16ul,
)

ErrorRecord = Struct(                  # 136 bytes: device header (56) + CPER section (80)
    "sequence" / Int64ul,              # 1, 2, 3... since the device was created
    "severity" / Int32ul,              # CPER_SEV_*
    "flags" / Int32ul,                 # reserved, 0
    "section_type" / Bytes(16),        # CPER_SEC_PLATFORM_MEM, GUID in EFI (little-endian) byte order
    "bar" / Int32ul,                   # BAR index the error lies in
    "reserved" / Int32ul,
    "bar_offset" / Int64ul,            # first byte of the poisoned range inside the BAR
    "length" / Int64ul,                # bytes poisoned (the granularity, clipped to the memory)
    "section" / MemErrorSection,
)
MEM_ERROR_SECTION_SIZE = MemErrorSection.sizeof()
ERROR_RECORD_SIZE = ErrorRecord.sizeof()

# A synthetic HBM geometry, so that single-cacheline errors carry module/bank/row/column:
# 64 B columns in a 2 KiB row, 16 banks, 64 Ki rows, one module per 4 GiB.
CACHELINE = 64


def dram_location(dpa: int) -> dict:
    return dict(column=(dpa >> 6) & 0x1F, bank=(dpa >> 11) & 0xF, row=(dpa >> 15) & 0xFFFF,
                module=(dpa >> 32) & 0xFFFF)


@dataclass(frozen=True)
class MemoryErrorRecord:
    """One decoded record of the error queue."""
    sequence: int
    severity: int
    bar: int
    bar_offset: int
    length: int
    physical_addr: int        # device physical address
    physical_addr_mask: int
    error_type: int
    validation_bits: int
    node: int = 0
    card: int = 0
    module: int = 0
    bank: int = 0
    row: int = 0
    column: int = 0

    @property
    def granularity(self) -> int:
        """Bytes covered, from the lowest set bit of the address mask (as ghes does)."""
        mask = self.physical_addr_mask
        return (mask & -mask) if mask else 1


def build_record(*, sequence: int, bar: int, bar_offset: int, length: int, dpa: int,
                 granularity: int, error_type: int = CPER_MEM_ERR_MULTI_ECC, card: int = 0,
                 severity: int = CPER_SEV_RECOVERABLE) -> bytes:
    valid = (CPER_MEM_VALID_ERROR_STATUS | CPER_MEM_VALID_PA | CPER_MEM_VALID_PA_MASK
             | CPER_MEM_VALID_NODE | CPER_MEM_VALID_CARD | CPER_MEM_VALID_ERROR_TYPE)
    where = dict(column=0, bank=0, row=0, module=0)
    if granularity == CACHELINE:     # DRAM coordinates only mean something for one cacheline
        valid |= CPER_MEM_VALID_MODULE | CPER_MEM_VALID_BANK | CPER_MEM_VALID_ROW | CPER_MEM_VALID_COLUMN
        where = dram_location(dpa)
    section = dict(validation_bits=valid, error_status=ERR_STATUS_ERR_MEM | ERR_STATUS_DATA,
                   physical_addr=dpa, physical_addr_mask=~(granularity - 1) & 0xFFFFFFFFFFFFFFFF,
                   node=0, card=card, device=0, bit_pos=0, requestor_id=0, responder_id=0,
                   target_id=0, error_type=error_type, extended=0, rank=0, mem_array_handle=0,
                   mem_dev_handle=0, **where)
    return ErrorRecord.build(dict(sequence=sequence, severity=severity, flags=0,
                                  section_type=CPER_SEC_PLATFORM_MEM.bytes_le, bar=bar, reserved=0,
                                  bar_offset=bar_offset, length=length, section=section))


def parse_record(raw: bytes) -> MemoryErrorRecord:
    rec = ErrorRecord.parse(raw[:ERROR_RECORD_SIZE])
    if rec.section_type != CPER_SEC_PLATFORM_MEM.bytes_le:
        raise ValueError(f"error record {rec.sequence}: section type is not Platform Memory Error")
    s = rec.section
    return MemoryErrorRecord(sequence=rec.sequence, severity=rec.severity, bar=rec.bar,
                       bar_offset=rec.bar_offset, length=rec.length, physical_addr=s.physical_addr,
                       physical_addr_mask=s.physical_addr_mask, error_type=s.error_type,
                       validation_bits=s.validation_bits, node=s.node, card=s.card,
                       module=s.module, bank=s.bank, row=s.row, column=s.column)
