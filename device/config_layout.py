"""Lay out a profile's config space: the construct-built image and the write-mask table.

Capability placement (fixed, so docs and tests can name offsets):

    0x40 Power Management      0x60 PCI Express (v2, endpoint)
    0xA0 MSI-X                 0xB0 vendor-specific ("HPFN", 16 bytes)
    0x100 AER (v2)             0x148 Resizable BAR (only when a BAR is resizable)

The write semantics are the table ``MASK_RULES``/``bar_rules``: (offset, width, rw, w1c),
relative to the start of the structure they belong to.  Anything not listed is read-only.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from hugepfn.abi import pci
from hugepfn.device import pci_formats as f
from hugepfn.device.msix import msix_bar_layout
from hugepfn.device.profiles import BarSpec, Profile

PM_OFFSET = 0x40
PCIE_OFFSET = 0x60
MSIX_OFFSET = 0xA0
VNDR_OFFSET = 0xB0
VNDR_LENGTH = 16
AER_OFFSET = 0x100
REBAR_OFFSET = AER_OFFSET + f.AER_CAP_SIZE      # 0x148
VENDOR_MAGIC = b"HPFN"
VENDOR_CAP_VERSION = 1

UNC_ERRORS = 0x03FFF030      # AER uncorrectable bits defined by PCIe 4.0 (DLP..AtomicOp blocked)
COR_ERRORS = 0x0000F1C1      # AER correctable bits (RxErr, BadTLP, BadDLLP, Rollover, Timeout, NonFatal, CorrInt, HeaderOF)
UNC_SEVERITY_DEFAULT = 0x00462030


@dataclass(frozen=True)
class Rule:
    offset: int
    width: int
    rw: int = 0
    w1c: int = 0


# Standard header and capability registers: who may write which bit.
HEADER_RULES = (
    Rule(pci.PCI_COMMAND, 2, rw=pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER | pci.PCI_COMMAND_PARITY
         | pci.PCI_COMMAND_SERR | pci.PCI_COMMAND_INTX_DISABLE),
    Rule(pci.PCI_STATUS, 2, w1c=pci.PCI_STATUS_W1C),
    Rule(pci.PCI_CACHE_LINE_SIZE, 1, rw=0xFF),
    Rule(pci.PCI_INTERRUPT_LINE, 1, rw=0xFF),
)
PM_RULES = (Rule(4, 2, rw=pci.PCI_PM_CTRL_STATE_MASK | pci.PCI_PM_CTRL_PME_ENABLE,
                 w1c=pci.PCI_PM_CTRL_PME_STATUS),)
PCIE_RULES = (
    Rule(0x08, 2, rw=0x7FFF),            # Device Control (bit 15 Initiate FLR is a hook, reads 0)
    Rule(0x0A, 2, w1c=0x000F),           # Device Status: CorrErr NonFatalErr FatalErr UnsupReq
    Rule(0x10, 2, rw=0x00C3),            # Link Control: ASPM, common clock, extended synch
    Rule(0x28, 2, rw=0x001F),            # Device Control 2: completion timeout
    Rule(0x30, 2, rw=0x000F),            # Link Control 2: target link speed
)
MSIX_RULES = (Rule(2, 2, rw=pci.PCI_MSIX_FLAGS_MASKALL | pci.PCI_MSIX_FLAGS_ENABLE),)
AER_RULES = (
    Rule(0x04, 4, w1c=UNC_ERRORS),       # Uncorrectable Error Status
    Rule(0x08, 4, rw=UNC_ERRORS),        # Uncorrectable Error Mask
    Rule(0x0C, 4, rw=UNC_ERRORS),        # Uncorrectable Error Severity
    Rule(0x10, 4, w1c=COR_ERRORS),       # Correctable Error Status
    Rule(0x14, 4, rw=COR_ERRORS),        # Correctable Error Mask
)
REBAR_CTRL_SIZE_SHIFT = 8
REBAR_CTRL_SIZE_MASK = 0x3F << REBAR_CTRL_SIZE_SHIFT


def bar_rules(bar: BarSpec, size: int | None = None) -> tuple[Rule, ...]:
    """The address bits of a memory BAR are writable down to its size; type bits are RO."""
    size = bar.size if size is None else size
    addr_mask = ~(size - 1) & 0xFFFFFFFFFFFFFFF0
    offset = pci.PCI_BASE_ADDRESS_0 + 4 * bar.index
    rules = [Rule(offset, 4, rw=addr_mask & 0xFFFFFFFF)]
    if bar.is_64bit:
        rules.append(Rule(offset + 4, 4, rw=addr_mask >> 32))
    return tuple(rules)


def bar_flags(bar: BarSpec) -> int:
    flags = pci.PCI_BASE_ADDRESS_MEM_TYPE_64 if bar.is_64bit else 0
    return flags | (pci.PCI_BASE_ADDRESS_MEM_PREFETCH if bar.prefetchable else 0)


def rebar_size_code(size: int) -> int:
    return size.bit_length() - 1 - 20


@dataclass(frozen=True)
class ConfigLayout:
    image: bytes
    rw_mask: bytes
    w1c_mask: bytes
    rebar_bars: tuple[int, ...]          # BAR indexes in Resizable BAR entry order
    has_rebar: bool


def _apply(rules, base: int, rw: bytearray, w1c: bytearray) -> None:
    for rule in rules:
        at = base + rule.offset
        rw[at:at + rule.width] = rule.rw.to_bytes(rule.width, "little")
        w1c[at:at + rule.width] = rule.w1c.to_bytes(rule.width, "little")


def vendor_payload(profile: Profile) -> bytes:
    name = profile.name.encode("ascii", "replace")[:VNDR_LENGTH - 3 - 5]
    return (VENDOR_MAGIC + bytes([VENDOR_CAP_VERSION]) + name).ljust(VNDR_LENGTH - 3, b"\0")


def build_layout(profile: Profile) -> ConfigLayout:
    image = bytearray(pci.CONFIG_SPACE_SIZE)
    rw = bytearray(pci.CONFIG_SPACE_SIZE)
    w1c = bytearray(pci.CONFIG_SPACE_SIZE)

    bars = [0] * 6
    for bar in profile.bars:
        bars[bar.index] = bar_flags(bar)
    image[0:pci.HEADER_SIZE] = f.Type0Header.build(dict(
        vendor_id=profile.vendor_id, device_id=profile.device_id, command=0,
        status=pci.PCI_STATUS_CAP_LIST, revision_id=profile.revision, class_code=profile.class_code,
        cache_line_size=0, latency_timer=0, header_type=0, bist=0, bars=bars, cardbus_cis=0,
        subsystem_vendor_id=profile.subsystem_vendor_id, subsystem_id=profile.subsystem_id,
        expansion_rom=0, capabilities_ptr=PM_OFFSET, reserved=bytes(7), interrupt_line=0,
        interrupt_pin=profile.interrupt_pin, min_gnt=0, max_lat=0))
    _apply(HEADER_RULES, 0, rw, w1c)
    for bar in profile.bars:
        _apply(bar_rules(bar), 0, rw, w1c)

    image[PM_OFFSET:PM_OFFSET + f.PM_CAP_SIZE] = f.PmCap.build(dict(
        next=PCIE_OFFSET, pmc=0x0003, pmcsr=pci.PCI_PM_CTRL_NO_SOFT_RESET, bridge_ext=0, data=0))
    _apply(PM_RULES, PM_OFFSET, rw, w1c)

    speed, width = profile.link_speed_code, profile.link_width
    image[PCIE_OFFSET:PCIE_OFFSET + f.PCIE_CAP_SIZE] = f.PcieCap.build(dict(
        next=MSIX_OFFSET, flags=pci.PCI_EXP_FLAGS_VERS2,
        devcap=0x1 | 1 << 5 | 1 << 15 | pci.PCI_EXP_DEVCAP_FLR,  # MPS 256B, ExtTag, RBE, FLR
        devctl=0x2910,                                           # MRRS 512B, ExtTag, RlxdOrd
        devsta=0, lnkcap=speed | width << 4, lnkctl=0, lnksta=speed | width << 4,
        sltcap=0, sltctl=0, sltsta=0, rtctl=0, rtcap=0, rtsta=0,
        devcap2=0x1F, devctl2=0, devsta2=0, lnkcap2=((1 << speed) - 1) << 1,
        lnkctl2=speed, lnksta2=0, sltcap2=0, sltctl2=0, sltsta2=0))
    _apply(PCIE_RULES, PCIE_OFFSET, rw, w1c)

    msix = msix_bar_layout(profile.msix_vectors)
    image[MSIX_OFFSET:MSIX_OFFSET + f.MSIX_CAP_SIZE] = f.MsixCap.build(dict(
        next=VNDR_OFFSET, msg_control=profile.msix_vectors - 1,
        table=msix.table_offset | profile.msix_bar, pba=msix.pba_offset | profile.msix_bar))
    _apply(MSIX_RULES, MSIX_OFFSET, rw, w1c)

    image[VNDR_OFFSET:VNDR_OFFSET + VNDR_LENGTH] = f.VendorCap.build(dict(
        next=0, length=VNDR_LENGTH, payload=vendor_payload(profile)))

    resizable = [b for b in profile.bars if b.resizable]
    image[AER_OFFSET:AER_OFFSET + f.AER_CAP_SIZE] = f.AerCap.build(dict(
        header=dict(cap_id=pci.PCI_EXT_CAP_ID_ERR, version=2, next=REBAR_OFFSET if resizable else 0),
        uncor_status=0, uncor_mask=0, uncor_severity=UNC_SEVERITY_DEFAULT, cor_status=0,
        cor_mask=0x2000, cap_control=0, header_log=[0] * 4, root_command=0, root_status=0,
        error_source=0, tlp_prefix_log=[0] * 4))
    _apply(AER_RULES, AER_OFFSET, rw, w1c)

    if resizable:
        entries = []
        for n, bar in enumerate(resizable):
            supported = sum(1 << (4 + rebar_size_code(s)) for s in bar.resizable_sizes)
            control = bar.index | (len(resizable) << 5 if n == 0 else 0)
            control |= rebar_size_code(bar.size) << REBAR_CTRL_SIZE_SHIFT
            entries.append(dict(capability=supported, control=control))
        cap = f.rebar_cap(len(resizable))
        blob = cap.build(dict(header=dict(cap_id=pci.PCI_EXT_CAP_ID_REBAR, version=1, next=0),
                              entries=entries))
        image[REBAR_OFFSET:REBAR_OFFSET + len(blob)] = blob
        for n in range(len(resizable)):
            ctrl = REBAR_OFFSET + 4 + 8 * n + 4
            rw[ctrl:ctrl + 4] = struct.pack("<I", REBAR_CTRL_SIZE_MASK)
    return ConfigLayout(image=bytes(image), rw_mask=bytes(rw), w1c_mask=bytes(w1c),
                        rebar_bars=tuple(b.index for b in resizable), has_rebar=bool(resizable))


def rebar_control_offset(entry: int) -> int:
    return REBAR_OFFSET + 4 + 8 * entry + 4


def walk_capabilities(data: bytes) -> list[tuple[int, int]]:
    """(offset, id) of the standard capability chain, then ((offset, 0x10000 | id)) extended."""
    found: list[tuple[int, int]] = []
    seen = set()
    ptr = data[pci.PCI_CAPABILITY_LIST] & ~3
    while ptr and ptr not in seen and ptr < 0x100:
        seen.add(ptr)
        header = f.CapHeader.parse(data[ptr:ptr + 2])
        found.append((ptr, header.cap_id))
        ptr = header.next & ~3
    ptr = pci.EXT_CAP_START
    while ptr and ptr not in seen:
        seen.add(ptr)
        header = f.ExtCapHeader.parse(data[ptr:ptr + 4])
        if header.cap_id == 0:
            break
        found.append((ptr, 0x10000 | header.cap_id))
        ptr = header.next
    return found
