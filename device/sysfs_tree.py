"""Show a device to the real pciutils: write it as a Linux sysfs PCI tree.

``lspci -A linux-sysfs -O sysfs.path=ROOT`` reads ROOT/devices/<slot>/{config,resource,
vendor,device,class,irq,...} exactly as it reads /sys/bus/pci.  BARs are given addresses
first (as firmware would during enumeration) by writing config space through the normal
write path, so lspci sees what a host would see after assignment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hugepfn.abi import pci
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX
from hugepfn.device.gpu import GpuDevice

DEFAULT_SLOT = "0000:01:00.0"
BASE_32 = 0xE000_0000            # 32-bit BARs go below 4 GiB
BASE_64 = 0x200_0000_0000        # 64-bit BARs above 2 TiB, so even a 1 TiB BAR fits aligned

# Linux struct resource flags, as the sysfs "resource" file prints them.
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
RESOURCE_LINES = 13


def _align(value: int, size: int) -> int:
    return -(-value // size) * size


def assign_bars(device: GpuDevice) -> dict[int, int]:
    """Program every BAR with a naturally aligned address and enable memory decoding."""
    cursors = {False: BASE_32, True: BASE_64}
    assigned: dict[int, int] = {}
    for spec in sorted(device.profile.bars, key=lambda b: -device.bar_size(b.index)):
        size = device.bar_size(spec.index)
        address = _align(cursors[spec.is_64bit], size)
        cursors[spec.is_64bit] = address + size
        offset = pci.PCI_BASE_ADDRESS_0 + 4 * spec.index
        device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset,
                            (address & 0xFFFFFFFF).to_bytes(4, "little"))
        if spec.is_64bit:
            device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset + 4,
                                (address >> 32).to_bytes(4, "little"))
        assigned[spec.index] = address
    command = device.command | pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER
    device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, pci.PCI_COMMAND, command.to_bytes(2, "little"))
    return assigned


def resource_lines(device: GpuDevice) -> list[str]:
    lines = []
    for index in range(RESOURCE_LINES):
        spec = device.profile.bar(index) if index < 6 else None
        if spec is None:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
            continue
        start = device.bar_address(index)
        size = device.bar_size(index)
        raw_bits = device.config.field(pci.PCI_BASE_ADDRESS_0 + 4 * index, 1) & 0xF
        flags = raw_bits | IORESOURCE_MEM
        flags |= IORESOURCE_PREFETCH if spec.prefetchable else 0
        flags |= IORESOURCE_MEM_64 if spec.is_64bit else 0
        lines.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}")
    return lines


def write_sysfs_tree(device: GpuDevice, root: str | os.PathLike, slot: str = DEFAULT_SLOT,
                     assign: bool = True) -> Path:
    """Write ROOT/devices/<slot>/ for ``device``; returns the device directory."""
    if assign:
        assign_bars(device)
    config = device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4096)
    return write_config_tree(config, resource_lines(device), root, slot)


def write_config_tree(config: bytes, resource: list[str], root: str | os.PathLike,
                      slot: str = DEFAULT_SLOT) -> Path:
    """Write ROOT/devices/<slot>/ from a config space image and the sysfs `resource` lines:
    the id files are read out of the config space itself, as the kernel fills them."""
    if len(config) < 64:
        raise ValueError(f"config space image of {len(config)} bytes; a PCI header has 64")
    path = Path(root) / "devices" / slot
    path.mkdir(parents=True, exist_ok=True)
    (path / "config").write_bytes(config)
    (path / "resource").write_text("\n".join(resource) + "\n")

    def field(offset: int, size: int) -> int:
        return int.from_bytes(config[offset:offset + size], "little")
    files = {
        "vendor": f"0x{field(pci.PCI_VENDOR_ID, 2):04x}", "device": f"0x{field(pci.PCI_DEVICE_ID, 2):04x}",
        "subsystem_vendor": f"0x{field(pci.PCI_SUBSYSTEM_VENDOR_ID, 2):04x}",
        "subsystem_device": f"0x{field(pci.PCI_SUBSYSTEM_VENDOR_ID + 2, 2):04x}",   # PCI_SUBSYSTEM_ID
        "class": f"0x{field(pci.PCI_CLASS_PROG, 3):06x}",
        "revision": f"0x{field(pci.PCI_REVISION_ID, 1):02x}", "irq": "0", "numa_node": "-1",
    }
    for name, text in files.items():
        (path / name).write_text(text + "\n")
    return path


def lspci_path() -> str | None:
    """The lspci to run: $HUGEPFN_LSPCI if set (tests point it elsewhere), else pciutils'."""
    override = os.environ.get("HUGEPFN_LSPCI")
    if override is not None:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("lspci") or next((c for c in ("/usr/bin/lspci", "/sbin/lspci", "/usr/sbin/lspci")
                                          if os.access(c, os.X_OK)), None)


def run_lspci(root: str | os.PathLike, *extra: str, slot: str = DEFAULT_SLOT) -> str:
    """Run the real lspci on the tree; raises FileNotFoundError when pciutils is missing."""
    exe = lspci_path()
    if exe is None:
        raise FileNotFoundError("lspci not found: install pciutils to decode config space")
    short = slot.split(":", 1)[1] if slot.count(":") == 2 else slot
    proc = subprocess.run([exe, "-A", "linux-sysfs", "-O", f"sysfs.path={root}", "-s", short, *extra],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"lspci failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
