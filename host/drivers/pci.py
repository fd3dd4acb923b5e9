"""The PCI device as the host sees it: BAR resources, the vfio virtual config space
(COMMAND, PM capability), power state, and BAR0 register reads.

This is the host's view only; the emulated device (hugepfn.device) or a vfio-user client
can stand behind it by supplying ``bar0_read32``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from hugepfn.abi.pci import (PCI_CAP_ID_PM, PCI_CAPABILITY_LIST, PCI_CFG_SPACE_SIZE, PCI_COMMAND,
                             PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_PM_CTRL, PCI_STATUS,
                             PCI_STATUS_CAP_LIST)

# The model places the PM capability at 0x40, so PMCSR (PCI_PM_CTRL) is at 0x44.
PM_CAP_OFFSET = 0x40
PMCSR_OFFSET = PM_CAP_OFFSET + PCI_PM_CTRL

PCI_D0, PCI_D1, PCI_D2, PCI_D3hot, PCI_D3cold = range(5)
POWER_STATE_NAMES = {PCI_D0: "D0", PCI_D1: "D1", PCI_D2: "D2", PCI_D3hot: "D3hot", PCI_D3cold: "D3cold"}


@dataclass
class PciBar:
    """A BAR resource: ``phys`` is pci_resource_start, ``size`` pci_resource_len."""
    index: int
    phys: int
    size: int
    io: bool = False            # I/O-port BAR: never mmap-able

    @property
    def pfn(self) -> int:
        return self.phys >> 12


@dataclass
class PciDevice:
    bdf: str = "0000:01:00.0"
    bars: dict[int, PciBar] = field(default_factory=dict)
    vendor: int = 0x10DE
    device: int = 0x2342
    is_virtfn: bool = False          # VFs have no_command_memory
    reset_works: bool = True
    current_state: int = PCI_D0
    # BAR0 32-bit register reads (a variant's status registers, e.g. GPU readiness).  None: status registers read 0xFF
    # (ready), except for ``ready_after_ms`` of (virtual) time after a reset, when they read 0.
    bar0_read32: Callable[[int], int] | None = None
    ready_after_ms: int = 0
    reset_at_ms: int | None = None
    clock: object | None = None            # the machine's Clock (now_ms)
    vconfig: bytearray = field(default_factory=lambda: bytearray(PCI_CFG_SPACE_SIZE))
    command_reg: int = 0

    def __post_init__(self) -> None:
        c = self.vconfig
        c[0:2] = self.vendor.to_bytes(2, "little")
        c[2:4] = self.device.to_bytes(2, "little")
        # memory decode on, as after pci_enable_device
        self.command = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        c[PCI_STATUS:PCI_STATUS + 2] = PCI_STATUS_CAP_LIST.to_bytes(2, "little")
        c[PCI_CAPABILITY_LIST] = PM_CAP_OFFSET
        c[PM_CAP_OFFSET] = PCI_CAP_ID_PM

    @property
    def no_command_memory(self) -> bool:
        return self.is_virtfn

    @property
    def command(self) -> int:
        return self.command_reg

    @command.setter
    def command(self, value: int) -> None:
        self.command_reg = value & 0xFFFF       # kept as an int: the fault path reads it
        self.vconfig[PCI_COMMAND:PCI_COMMAND + 2] = self.command_reg.to_bytes(2, "little")

    def read_bar0(self, offset: int) -> int:
        if self.bar0_read32 is not None:
            return self.bar0_read32(offset)
        if self.reset_at_ms is not None and self.clock is not None:
            if self.clock.now_ms < self.reset_at_ms + self.ready_after_ms:
                return 0
        return 0xFF

    def bar(self, index: int) -> PciBar | None:
        return self.bars.get(index)
