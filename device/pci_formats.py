"""PCI configuration space formats, declared once with construct.

These declarations build the initial config image of a profile and parse any image
back (tests, `hugepfn lspci`).  The hot read/write path (config_space.py) works on the
raw bytearray with struct; tests check that both views agree.
"""
from __future__ import annotations

from construct import (Array, BitStruct, BitsInteger, Bytes, ByteSwapped, Const, Int8ul, Int16ul,
                       Int24ul, Int32ul, Struct, this)

CONFIG_SPACE_SIZE = 4096
HEADER_SIZE = 64
EXT_CAP_START = 0x100

# Type-0 header offsets (include/uapi/linux/pci_regs.h).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

# COMMAND bits.
PCI_COMMAND_IO = 1 << 0
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_MASTER = 1 << 2
PCI_COMMAND_PARITY = 1 << 6
PCI_COMMAND_SERR = 1 << 8
PCI_COMMAND_INTX_DISABLE = 1 << 10

# STATUS bits.
PCI_STATUS_INTERRUPT = 1 << 3
PCI_STATUS_CAP_LIST = 1 << 4
PCI_STATUS_PARITY = 1 << 8            # master data parity error (W1C)
PCI_STATUS_SIG_TARGET_ABORT = 1 << 11
PCI_STATUS_REC_TARGET_ABORT = 1 << 12
PCI_STATUS_REC_MASTER_ABORT = 1 << 13
PCI_STATUS_SIG_SYSTEM_ERROR = 1 << 14
PCI_STATUS_DETECTED_PARITY = 1 << 15
PCI_STATUS_W1C = (PCI_STATUS_PARITY | PCI_STATUS_SIG_TARGET_ABORT | PCI_STATUS_REC_TARGET_ABORT
                  | PCI_STATUS_REC_MASTER_ABORT | PCI_STATUS_SIG_SYSTEM_ERROR
                  | PCI_STATUS_DETECTED_PARITY)

# BAR low bits.
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08

# Capability ids.
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_EXT_CAP_ID_ERR = 0x0001
PCI_EXT_CAP_ID_REBAR = 0x0015

# MSI-X message control bits.
PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 1 << 14
PCI_MSIX_FLAGS_ENABLE = 1 << 15

# PCI Express capability.
PCI_EXP_FLAGS_VERS2 = 0x0002          # capability version 2, device type 0 = endpoint
PCI_EXP_DEVCAP_FLR = 1 << 28
PCI_EXP_DEVCTL_BCR_FLR = 1 << 15

# Power management.
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 1 << 3
PCI_PM_CTRL_PME_ENABLE = 1 << 8
PCI_PM_CTRL_PME_STATUS = 1 << 15

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

# The Uncorrectable Error Status bits the device model uses.
PCI_ERR_UNC_POISON_TLP = 1 << 12
PCI_ERR_UNC_COMP_ABORT = 1 << 15
PCI_ERR_UNC_UNSUP = 1 << 20
