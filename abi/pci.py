"""PCI configuration space registers and bits (include/uapi/linux/pci_regs.h): the numbers the
device's config space, its construct formats (hugepfn.device.pci_formats), the host's view of a
PCI device and the tests share."""
from __future__ import annotations

CONFIG_SPACE_SIZE = 4096             # PCI_CFG_SPACE_EXP_SIZE: a PCI Express function's
PCI_CFG_SPACE_SIZE = 256             # a conventional function's (and vfio's virtual copy)
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
PCI_BASE_ADDRESS_SPACE_IO = 0x01
PCI_BASE_ADDRESS_MEM_TYPE_MASK = 0x06
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
PCI_MSIX_FLAGS_MASKALL = 1 << 14
PCI_MSIX_FLAGS_ENABLE = 1 << 15

# PCI Express capability.
PCI_EXP_FLAGS_VERS2 = 0x0002          # capability version 2, device type 0 = endpoint
PCI_EXP_DEVCAP_FLR = 1 << 28
PCI_EXP_DEVCTL_BCR_FLR = 1 << 15

# Power management: PMCSR sits 4 bytes into the capability.
PCI_PM_CTRL = 0x04
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 1 << 3
PCI_PM_CTRL_PME_ENABLE = 1 << 8
PCI_PM_CTRL_PME_STATUS = 1 << 15

# The Uncorrectable Error Status bits the device model uses.
PCI_ERR_UNC_POISON_TLP = 1 << 12
PCI_ERR_UNC_UNSUP = 1 << 20
