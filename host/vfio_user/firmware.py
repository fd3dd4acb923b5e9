"""What firmware does to a PCI function before the host's vfio-pci binds: BAR sizing
and placement, through config space of an attached vfio-user device.

Each memory BAR is sized by the standard protocol (write all ones, read back the
mask), then placed naturally aligned: 32-bit BARs in the 32-bit MMIO window below
4 GiB, 64-bit BARs above 4 GiB, largest first.  The host model then uses these bus
addresses, so its pfns are the device's (pfn = address >> PAGE_SHIFT).
"""
from __future__ import annotations

from dataclasses import dataclass

from hugepfn.abi.pci import (PCI_BASE_ADDRESS_0, PCI_BASE_ADDRESS_MEM_PREFETCH, PCI_BASE_ADDRESS_MEM_TYPE_64,
                             PCI_BASE_ADDRESS_MEM_TYPE_MASK, PCI_BASE_ADDRESS_SPACE_IO, PCI_COMMAND,
                             PCI_COMMAND_MEMORY)

from .client import VfioUserClient

MMIO32_BASE = 0xC000_0000
MMIO32_LIMIT = 0xFEC0_0000       # below the IOAPIC/LAPIC hole
MMIO64_BASE = 1 << 32


@dataclass(frozen=True)
class BarPlacement:
    index: int
    address: int
    size: int
    is_64bit: bool
    prefetchable: bool

    @property
    def pfn(self) -> int:
        return self.address >> 12


def size_bars(client: VfioUserClient) -> list[tuple[int, int, bool, bool]]:
    """(index, size, is_64bit, prefetchable) of every implemented memory BAR."""
    found = []
    index = 0
    while index < 6:
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        original = client.config_read(offset, 4)
        if original & PCI_BASE_ADDRESS_SPACE_IO:
            index += 1
            continue
        is_64 = original & PCI_BASE_ADDRESS_MEM_TYPE_MASK == PCI_BASE_ADDRESS_MEM_TYPE_64
        client.config_write(offset, 4, 0xFFFF_FFFF)
        mask = client.config_read(offset, 4) & ~0xF
        client.config_write(offset, 4, original)
        if is_64:
            upper = client.config_read(offset + 4, 4)
            client.config_write(offset + 4, 4, 0xFFFF_FFFF)
            mask |= client.config_read(offset + 4, 4) << 32
            client.config_write(offset + 4, 4, upper)
            width = 64
        else:
            width = 32
        if mask:
            size = ((~mask) & ((1 << width) - 1)) + 1
            found.append((index, size, is_64, bool(original & PCI_BASE_ADDRESS_MEM_PREFETCH)))
        index += 2 if is_64 else 1
    return found


def assign_bar_addresses(client: VfioUserClient, mmio32_base: int = MMIO32_BASE,
                         mmio64_base: int = MMIO64_BASE) -> list[BarPlacement]:
    """Place every memory BAR naturally aligned and turn on memory decoding."""
    placements = []
    cursor = {False: mmio32_base, True: mmio64_base}
    for index, size, is_64, prefetch in sorted(size_bars(client), key=lambda bar: -bar[1]):
        address = -(-cursor[is_64] // size) * size          # align up to the BAR's size
        if not is_64 and address + size > MMIO32_LIMIT:
            raise ValueError(f"BAR{index} of {size:#x} bytes does not fit the 32-bit MMIO window")
        cursor[is_64] = address + size
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        low_bits = client.config_read(offset, 4) & 0xF
        client.config_write(offset, 4, (address & 0xFFFF_FFF0) | low_bits)
        if is_64:
            client.config_write(offset + 4, 4, address >> 32)
        placements.append(BarPlacement(index, address, size, is_64, prefetch))
    command = client.config_read(PCI_COMMAND, 2)
    client.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY)
    return sorted(placements, key=lambda p: p.index)
