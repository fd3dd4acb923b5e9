"""The QEMU options a served device needs, worked out from its profile.

* the ``-device vfio-user-pci`` line for the socket;
* guest RAM QEMU can hand to the device: ``memory-backend-memfd`` with ``share=on``, so
  DMA_MAP carries an fd the server can mmap;
* enough guest physical address bits for firmware to place the 64-bit BARs.

Why the last one matters: SeaBIOS, QEMU's default x86 firmware, opens its 64-bit PCI
window at the top of the guest physical address space, whose width is the vCPU's
``phys-bits``.  ``-cpu max`` under TCG has 40 bits (1 TiB), so a 1 TiB BAR cannot be
placed next to RAM and the 32-bit hole: it stays unassigned and the guest sees address 0.
With ``-cpu max,phys-bits=41`` SeaBIOS puts it at 1 TiB.  QEMU's q35 host bridge then
reports the window where the BARs actually are (its 64-bit hole grows to cover them), so
``-global q35-pcihost.pci-hole64-size=...`` changes nothing with SeaBIOS; `make e2e`
boots gpu-1t and nvgrace guests with exactly these options (docs/qemu.md).
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Iterable

from hugepfn.device.profiles import BarSpec, Profile

# -cpu max under TCG (QEMU's TCG_PHYS_ADDR_BITS); KVM guests default to the host's value
# only with host-phys-bits=on.
TCG_DEFAULT_PHYS_BITS = 40


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def phys_bits_needed(bars: Iterable[BarSpec]) -> int:
    """Physical address bits with which firmware can place every 64-bit BAR.

    The 64-bit BARs, each naturally aligned, fit in one power-of-two window as large as
    their sum rounded up; that window must sit in the top half of the address space,
    leaving the bottom half to RAM and the 32-bit hole (so: guests under half of it in RAM).
    """
    window = _next_pow2(sum(bar.size for bar in bars if bar.is_64bit))
    return max(TCG_DEFAULT_PHYS_BITS, window.bit_length())


def cpu_option(profile: Profile, model: str = "max") -> str:
    """The ``-cpu`` value for ``profile`` (``max,phys-bits=N``)."""
    return f"{model},phys-bits={phys_bits_needed(profile.bars)}"


def socket_address(address: str) -> dict:
    """QEMU's SocketAddress for a unix socket; ``@name`` is an abstract one."""
    if address.startswith("@"):
        return {"path": address[1:], "type": "unix", "abstract": True}
    return {"path": address, "type": "unix"}


def device_json(address: str) -> str:
    """The JSON form of ``-device vfio-user-pci`` (the form QEMU's documentation uses)."""
    return json.dumps({"driver": "vfio-user-pci", "socket": socket_address(address)}, separators=(",", ":"))


def device_argument(address: str) -> str:
    """``-device '<json>'``, quoted for a POSIX shell."""
    return f"-device {shlex.quote(device_json(address))}"


MEMORY_BACKEND = "-object memory-backend-memfd,id=mem,size=RAM,share=on -machine memory-backend=mem"
