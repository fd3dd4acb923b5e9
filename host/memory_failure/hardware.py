"""Hardware poison: pfns the device/memory controller has marked bad, and what happens when a
load or store consumes one through a mapping (Machine.hw_poison, the HwPoisonHook).

A consumption is a synchronous machine check.  x86 (kill_me_maybe, task work of the
consuming thread) logs "mce: Uncorrected hardware memory error in user-access at <phys>" and
calls memory_failure(pfn, MF_ACTION_REQUIRED) as that thread; 0, -EHWPOISON and -EOPNOTSUPP
end there, anything else logs "mce: Memory error not recovered" and forces a plain SIGBUS.
arm64 (SEA -> GHES task work) calls memory_failure the same way and, on any other result,
logs "<pfn>: Sending SIGBUS to <comm>:<tid> due to hardware memory corruption" and forces a
plain SIGBUS (docs/kernel-reference.md: memory_failure callers).

Where the bad memory is known: pfns marked here (the ``poison`` scenario step, an error
source's report when it has no better view), and the memory of devices that keep their own
poison (``add_device_memory``: a served device's BARs where firmware placed them).  The
device is the truth for its memory: a load of a line it holds as poisoned machine-checks at
once, whether or not the host has read the device's error record, and a line the device has
scrubbed or repaired is good again.  A store consumes nothing (the machine only asks about
loads); whether it repairs the line is the device's business (its profile's repair_by_write).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE
from .flags import MF_ACTION_REQUIRED
from .poison_set import PoisonSet

if TYPE_CHECKING:
    from ..mm.vma import Vma
    from ..tasks import Thread
    from .core import MemoryFailure

EHWPOISON = 133          # Linux errno; not in the Python errno module
_DONE = (0, -EHWPOISON, -errno.EOPNOTSUPP)
CACHELINE = 64           # what one load reads from memory, and the unit memory is poisoned in


@dataclass(frozen=True)
class DeviceMemory:
    """``size`` bytes of memory of BAR ``bar`` at bus address ``address``, whose poison the
    device's model keeps (``model.first_poisoned(bar, offset, length)``: the first poisoned
    byte offset, or None; ``model.poisoned_pages(bar)``)."""
    bar: int
    address: int
    size: int
    model: Any

    @property
    def pfn_range(self) -> range:
        return range(self.address >> PAGE_SHIFT, (self.address + self.size + PAGE_SIZE - 1) >> PAGE_SHIFT)

    def first_bad(self, phys_lo: int, phys_hi: int) -> int | None:
        """The first poisoned physical address in [phys_lo, phys_hi), or None."""
        lo, hi = max(phys_lo, self.address), min(phys_hi, self.address + self.size)
        if lo >= hi:
            return None
        offset = self.model.first_poisoned(self.bar, lo - self.address, hi - lo)
        return None if offset is None else self.address + offset

    def pfns(self) -> list[int]:
        return [(self.address >> PAGE_SHIFT) + page for page in self.model.poisoned_pages(self.bar)]


def device_memory(device, placements: dict) -> list[DeviceMemory]:
    """The memory BARs of an emulated device (hugepfn.device.gpu.GpuDevice) at the bus addresses
    in ``placements`` (BAR index -> placement with .address and .size)."""
    out = []
    for bar in device.profile.memory_bars:
        placed = placements.get(bar.index)
        if placed is not None:
            out.append(DeviceMemory(bar.index, placed.address, min(bar.memory_size, placed.size), device.poison))
    return out


class HardwarePoison:
    """Implements hugepfn.host.machine.HwPoisonHook."""

    def __init__(self, mf: "MemoryFailure") -> None:
        self.mf = mf
        self.pfns = PoisonSet()
        self.devices: list[DeviceMemory] = []
        self.consumptions = 0

    def add_device_memory(self, memory: DeviceMemory) -> None:
        """Let the device's own poison model answer for ``memory`` (from now on every access
        asks: a device can poison a line at any time)."""
        self.devices.append(memory)
        self.mf.machine.hw_poison = self

    def poisoned_pfns(self) -> set[int]:
        """Every pfn holding bad memory now, wherever it is known."""
        out = set(self.pfns)
        for memory in self.devices:
            out.update(memory.pfns())
        return out

    def any_in(self, pfn_lo: int, pfn_hi: int) -> bool:
        return self.first_poisoned(pfn_lo, pfn_hi) is not None

    def poison(self, pfn: int) -> bool:
        # the machine consults the hook on every access only once something is poisoned
        self.mf.machine.hw_poison = self
        return self.pfns.add(pfn)

    def clear(self, pfn: int) -> bool:
        """The memory was repaired (rewritten): loads no longer machine-check."""
        return self.pfns.discard(pfn)

    # -- HwPoisonHook -------------------------------------------------------------------------
    def is_poisoned(self, pfn: int, offset: int | None = None) -> bool:
        if pfn in self.pfns:
            return True
        if not self.devices:
            return False
        phys = pfn << PAGE_SHIFT
        lo, hi = (phys, phys + PAGE_SIZE) if offset is None else (phys + (offset & ~(CACHELINE - 1)),
                                                                 phys + (offset & ~(CACHELINE - 1)) + CACHELINE)
        return any(m.first_bad(lo, hi) is not None for m in self.devices)

    def first_poisoned(self, pfn_lo: int, pfn_hi: int) -> int | None:
        found = [self.pfns.first_in(pfn_lo, pfn_hi)]
        found += [None if (phys := m.first_bad(pfn_lo << PAGE_SHIFT, pfn_hi << PAGE_SHIFT)) is None
                  else phys >> PAGE_SHIFT for m in self.devices]
        found = [pfn for pfn in found if pfn is not None]
        return min(found) if found else None

    def consume(self, thread: "Thread", vma: "Vma", addr: int, pfn: int, write: bool) -> None:
        mf = self.mf
        m = mf.machine
        self.consumptions += 1
        phys = (pfn << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1))
        proc = thread.process
        mf.guard_consumed(proc, thread.tid, pfn, "mce")
        if m.arch.name == "x86_64":
            m.klog.printk(f"mce: Uncorrected hardware memory error in user-access at {phys:x}")
            ret = mf.memory_failure(pfn, MF_ACTION_REQUIRED, thread)
            if ret in _DONE:
                return
            m.klog.printk("mce: Memory error not recovered")
        else:
            ret = mf.memory_failure(pfn, MF_ACTION_REQUIRED, thread)
            if ret in _DONE:
                return
            # ghes.c memory_failure_cb prints twcb->pfn with %#llx: the pfn, not the address.
            m.klog.printk(f"{pfn:#x}: Sending SIGBUS to {thread.comm}:{thread.tid} "
                          f"due to hardware memory corruption")
        m.tasks.send_signal(thread, "SIGBUS", forced=True)      # force_sig(SIGBUS): SI_KERNEL, no address
