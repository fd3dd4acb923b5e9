"""PCI configuration space formats, declared once with construct.

The register offsets and bits they use are declared in ``hugepfn.abi.pci``.
These declarations build the initial config image of a profile and parse any image
back (tests, `hugepfn lspci`).  The hot read/write path (config_space.py) works on the
raw bytearray with struct; tests check that both views agree.
"""
from __future__ import annotations

from construct import (Array, BitStruct, BitsInteger, Bytes, ByteSwapped, Const, Int8ul, Int16ul,
                       Int24ul, Int32ul, Struct, this)


from hugepfn.abi.pci import PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX, PCI_CAP_ID_PM, PCI_CAP_ID_VNDR

Type0Header = Struct(
    "vendor_id" / Int16ul,
    "device_id" / Int16ul,
    "command" / Int16ul,
    "status" / Int16ul,
    "revision_id" / Int8ul,
    "class_code" / Int24ul,          # prog-if | subclass << 8 | base class << 16
    "cache_line_size" / Int8ul,
    "latency_timer" / Int8ul,
    "header_type" / Int8ul,
    "bist" / Int8ul,
    "bars" / Array(6, Int32ul),
    "cardbus_cis" / Int32ul,
    "subsystem_vendor_id" / Int16ul,
    "subsystem_id" / Int16ul,
    "expansion_rom" / Int32ul,
    "capabilities_ptr" / Int8ul,
    "reserved" / Bytes(7),
    "interrupt_line" / Int8ul,
    "interrupt_pin" / Int8ul,
    "min_gnt" / Int8ul,
    "max_lat" / Int8ul,
)

CapHeader = Struct("cap_id" / Int8ul, "next" / Int8ul)

PmCap = Struct(                       # 8 bytes
    "cap_id" / Const(PCI_CAP_ID_PM, Int8ul),
    "next" / Int8ul,
    "pmc" / Int16ul,
    "pmcsr" / Int16ul,
    "bridge_ext" / Int8ul,
    "data" / Int8ul,
)

PcieCap = Struct(                     # 60 bytes, capability version 2
    "cap_id" / Const(PCI_CAP_ID_EXP, Int8ul),
    "next" / Int8ul,
    "flags" / Int16ul,
    "devcap" / Int32ul,
    "devctl" / Int16ul,
    "devsta" / Int16ul,
    "lnkcap" / Int32ul,
    "lnkctl" / Int16ul,
    "lnksta" / Int16ul,
    "sltcap" / Int32ul,
    "sltctl" / Int16ul,
    "sltsta" / Int16ul,
    "rtctl" / Int16ul,
    "rtcap" / Int16ul,
    "rtsta" / Int32ul,
    "devcap2" / Int32ul,
    "devctl2" / Int16ul,
    "devsta2" / Int16ul,
    "lnkcap2" / Int32ul,
    "lnkctl2" / Int16ul,
    "lnksta2" / Int16ul,
    "sltcap2" / Int32ul,
    "sltctl2" / Int16ul,
    "sltsta2" / Int16ul,
)

MsixCap = Struct(                     # 12 bytes
    "cap_id" / Const(PCI_CAP_ID_MSIX, Int8ul),
    "next" / Int8ul,
    "msg_control" / Int16ul,          # table size - 1 | function mask | enable
    "table" / Int32ul,                # offset | BIR
    "pba" / Int32ul,                  # offset | BIR
)

VendorCap = Struct(                   # the 3-byte header, then vendor-defined bytes
    "cap_id" / Const(PCI_CAP_ID_VNDR, Int8ul),
    "next" / Int8ul,
    "length" / Int8ul,
    "payload" / Bytes(this.length - 3),
)

ExtCapHeader = ByteSwapped(BitStruct(
    "next" / BitsInteger(12),
    "version" / BitsInteger(4),
    "cap_id" / BitsInteger(16),
))

AerCap = Struct(                      # 0x48 bytes (v2, with the root-port and TLP-prefix words)
    "header" / ExtCapHeader,
    "uncor_status" / Int32ul,
    "uncor_mask" / Int32ul,
    "uncor_severity" / Int32ul,
    "cor_status" / Int32ul,
    "cor_mask" / Int32ul,
    "cap_control" / Int32ul,
    "header_log" / Array(4, Int32ul),
    "root_command" / Int32ul,
    "root_status" / Int32ul,
    "error_source" / Int32ul,
    "tlp_prefix_log" / Array(4, Int32ul),
)

RebarEntry = Struct(
    "capability" / Int32ul,           # bit (4 + n) set: size 2^(20 + n) supported
    "control" / Int32ul,              # BAR index [2:0], number of BARs [7:5], size [13:8]
)


def rebar_cap(entries: int) -> Struct:
    return Struct("header" / ExtCapHeader, "entries" / Array(entries, RebarEntry))


PM_CAP_SIZE = PmCap.sizeof()
PCIE_CAP_SIZE = PcieCap.sizeof()
MSIX_CAP_SIZE = MsixCap.sizeof()
AER_CAP_SIZE = AerCap.sizeof()
