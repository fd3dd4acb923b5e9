"""What the conformance tests need to know about the served GpuDevice, read from it.

Expectations come from the device object (region_info, irq_info, its profile and
register map) rather than from constants, so the suite checks the wire against
the device whatever the profile.
"""
from __future__ import annotations

from dataclasses import dataclass

from hugepfn.abi.registers import REG_DOORBELL, REG_DOORBELL_COUNT, REG_ID, REG_SCRATCH
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX
from hugepfn.device.config_layout import MSIX_OFFSET
from hugepfn.host.vfio_user import VfioUserClient

MSIX_ENABLE = 1 << 15
MSIX_ENTRY_SIZE = 16
MSIX_VECTOR_CONTROL = 12


@dataclass
class DeviceFacts:
    device: object
    regs: int                 # BAR of the trapped register file
    regs_size: int
    mem: int                  # first memory BAR (mmappable)
    mem_size: int
    mmap_areas: tuple         # ((offset, size), ...) of the memory BAR
    msix_bar: int
    msix_vectors: int
    ids: int                  # vendor | device << 16
    irq_counts: dict
    num_regions: int

    scratch = REG_SCRATCH
    doorbell = REG_DOORBELL
    doorbell_count = REG_DOORBELL_COUNT
    ident = REG_ID

    @classmethod
    def of(cls, device) -> "DeviceFacts":
        bars = {b.index: b for b in device.profile.bars}
        regs = next(i for i, b in bars.items() if b.kind == "registers")
        mem = next(i for i, b in bars.items() if b.kind == "memory")
        msix = next(i for i, b in bars.items() if b.kind == "msix")
        mem_info = device.region_info(mem)
        return cls(device=device, regs=regs, regs_size=device.region_info(regs).size, mem=mem,
                   mem_size=mem_info.size, mmap_areas=tuple((a.offset, a.size) for a in mem_info.sparse_areas),
                   msix_bar=msix, msix_vectors=device.profile.msix_vectors,
                   ids=int.from_bytes(device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4), "little"),
                   irq_counts={i: device.irq_info(i).count for i in range(device.num_irqs)},
                   num_regions=device.num_regions)

    @property
    def unused_bars(self) -> list[int]:
        """BAR indexes with no region (unimplemented, or the upper half of a 64-bit BAR)."""
        return [i for i in range(6) if self.device.region_info(i).size == 0]

    # -- driving the device through the wire, as a guest driver would ----------------------
    def enable_msix(self, client: VfioUserClient, vectors=None) -> None:
        """Set MSI-X Enable in config space and unmask the vectors in the table (BAR)."""
        control = client.config_read(MSIX_OFFSET + 2, 2)
        client.config_write(MSIX_OFFSET + 2, 2, control | MSIX_ENABLE)
        for v in range(self.msix_vectors) if vectors is None else vectors:
            client.region_write(self.msix_bar, v * MSIX_ENTRY_SIZE + MSIX_VECTOR_CONTROL, bytes(4))

    def ring(self, client: VfioUserClient, vector: int) -> None:
        client.region_write(self.regs, self.doorbell, vector.to_bytes(4, "little"))
