"""construct round trips for every declared format: build(parse(x)) == x and parse(build(v)) == v."""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hugepfn.abi import cper, pci
from hugepfn.device import pci_formats as pf, poison_store
from hugepfn.device.config_layout import (AER_OFFSET, MSIX_OFFSET, PCIE_OFFSET, PM_OFFSET,
                                          REBAR_OFFSET, VNDR_OFFSET, VNDR_LENGTH)
from hugepfn.device.gpu import GpuDevice
from hugepfn.device.profiles import load_profile

u8, u16, u32, u64 = (st.integers(0, (1 << n) - 1) for n in (8, 16, 32, 64))


def roundtrip(fmt, raw: bytes):
    value = fmt.parse(raw)
    assert fmt.build(value) == raw
    assert fmt.parse(fmt.build(value)) == value
    return value


@pytest.fixture(scope="module")
def images():
    out = {}
    for name in ("tiny", "rebar", "nvgrace"):
        with GpuDevice.from_profile(name) as dev:
            out[name] = dev.region_read(7, 0, 4096)
    return out


def test_header_roundtrip(images):
    for raw in images.values():
        header = roundtrip(pf.Type0Header, raw[:pci.HEADER_SIZE])
        assert header.capabilities_ptr == PM_OFFSET


@given(st.binary(min_size=64, max_size=64))
@settings(max_examples=50, deadline=None)
def test_header_roundtrip_any_bytes(raw):
    roundtrip(pf.Type0Header, raw)


@pytest.mark.parametrize("fmt, offset, size", [
    (pf.PmCap, PM_OFFSET, pf.PM_CAP_SIZE),
    (pf.PcieCap, PCIE_OFFSET, pf.PCIE_CAP_SIZE),
    (pf.MsixCap, MSIX_OFFSET, pf.MSIX_CAP_SIZE),
    (pf.VendorCap, VNDR_OFFSET, VNDR_LENGTH),
    (pf.AerCap, AER_OFFSET, pf.AER_CAP_SIZE),
    (pf.ExtCapHeader, AER_OFFSET, 4),
    (pf.CapHeader, MSIX_OFFSET, 2),
])
def test_capability_roundtrip(images, fmt, offset, size):
    value = roundtrip(fmt, images["tiny"][offset:offset + size])
    assert len(fmt.build(value)) == size
    if fmt is pf.VendorCap:
        assert value.payload.startswith(b"HPFN\x01tiny")


def test_capability_sizes():
    assert (pf.PM_CAP_SIZE, pf.PCIE_CAP_SIZE, pf.MSIX_CAP_SIZE, pf.AER_CAP_SIZE) == (8, 60, 12, 72)


def test_rebar_roundtrip(images):
    fmt = pf.rebar_cap(1)
    value = roundtrip(fmt, images["rebar"][REBAR_OFFSET:REBAR_OFFSET + 12])
    assert value.header.cap_id == pci.PCI_EXT_CAP_ID_REBAR


@given(cap_id=u16, version=st.integers(0, 15), nxt=st.integers(0, 0xFFF))
def test_ext_cap_header_values_roundtrip(cap_id, version, nxt):
    value = dict(cap_id=cap_id, version=version, next=nxt)
    raw = pf.ExtCapHeader.build(value)
    assert struct.unpack("<I", raw)[0] == cap_id | version << 16 | nxt << 20   # PCIe bit layout
    parsed = pf.ExtCapHeader.parse(raw)
    assert (parsed.cap_id, parsed.version, parsed.next) == (cap_id, version, nxt)
    assert pf.ExtCapHeader.build(parsed) == raw


@given(st.binary(min_size=80, max_size=80))
@settings(max_examples=50, deadline=None)
def test_cper_memory_section_roundtrip(raw):
    roundtrip(cper.MemErrorSection, raw)


def test_cper_section_layout_matches_linux_struct():
    # struct cper_sec_mem_err: 4 x u64, 8 x u16, 3 x u64, u8, u8, 3 x u16 = 80 bytes
    assert cper.MEM_ERROR_SECTION_SIZE == 80
    assert cper.ERROR_RECORD_SIZE == 136


def test_error_record_roundtrip_and_fields():
    raw = cper.build_record(sequence=7, bar=2, bar_offset=0x1040, length=64, dpa=0x4000_0000_1040,
                            granularity=64)
    rec = roundtrip(cper.ErrorRecord, raw)
    assert rec.section_type == cper.CPER_SEC_PLATFORM_MEM.bytes_le
    s = rec.section
    assert s.physical_addr == 0x4000_0000_1040
    assert s.physical_addr_mask == 0xFFFF_FFFF_FFFF_FFC0
    assert s.validation_bits & cper.CPER_MEM_VALID_PA and s.validation_bits & cper.CPER_MEM_VALID_COLUMN
    decoded = cper.parse_record(raw)
    assert (decoded.sequence, decoded.bar, decoded.bar_offset, decoded.length) == (7, 2, 0x1040, 64)
    assert decoded.granularity == 64
    assert decoded.column == (0x4000_0000_1040 >> 6) & 0x1F


def test_error_record_coarse_granularity_has_no_dram_coordinates():
    raw = cper.build_record(sequence=1, bar=2, bar_offset=0, length=2 << 20, dpa=0, granularity=2 << 20)
    decoded = cper.parse_record(raw)
    assert decoded.granularity == 2 << 20
    assert decoded.physical_addr_mask == ~((2 << 20) - 1) & (1 << 64) - 1
    assert not decoded.validation_bits & (cper.CPER_MEM_VALID_ROW | cper.CPER_MEM_VALID_COLUMN)


IDENTITY = poison_store.DeviceIdentity.of(load_profile("tiny"))


@given(entries=st.lists(st.tuples(st.integers(0, 5), u32, u32), max_size=20), generation=u64)
@settings(max_examples=50, deadline=None)
def test_poison_file_roundtrip_and_struct_path_agrees(entries, generation):
    entries = [(bar, start, start + length + 1) for bar, start, length in entries]
    raw = poison_store.encode(entries, generation, IDENTITY)
    value = roundtrip(poison_store.PoisonFile, raw)
    assert value.count == len(entries) and value.generation == generation
    assert value.identity == IDENTITY.encode() and value.identity_size == len(IDENTITY.encode())
    assert [(e.bar, e.start, e.end) for e in value.entries] == entries
    built = poison_store.PoisonFile.build(dict(generation=generation, count=len(entries),
                                               identity_size=len(IDENTITY.encode()), identity=IDENTITY.encode(),
                                               entries=[dict(bar=b, start=s, end=e) for b, s, e in entries],
                                               crc32=value.crc32))
    assert built == raw
    assert poison_store.decode(raw) == (generation, IDENTITY, entries)


def test_poison_file_random_large_roundtrip():
    rng = random.Random(4)
    entries = sorted((2, s, s + 64) for s in rng.sample(range(0, 1 << 30, 128), 2000))
    raw = poison_store.encode(entries, 3, IDENTITY)
    assert poison_store.decode(raw) == (3, IDENTITY, entries)
    assert len(raw) == 32 + len(IDENTITY.encode()) + 24 * len(entries) + 4
