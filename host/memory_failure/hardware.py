"""Hardware poison: pfns the device/memory controller has marked bad, and what happens when a
load or store consumes one through a mapping (Machine.hw_poison, the HwPoisonHook).

A consumption is a synchronous machine check.  x86 (kill_me_maybe, task work of the
consuming thread) logs "mce: Uncorrected hardware memory error in user-access at <phys>" and
calls memory_failure(pfn, MF_ACTION_REQUIRED) as that thread; 0, -EHWPOISON and -EOPNOTSUPP
end there, anything else logs "mce: Memory error not recovered" and forces a plain SIGBUS.
arm64 (SEA -> GHES task work) calls memory_failure the same way and, on any other result,
logs "<pfn>: Sending SIGBUS to <comm>:<tid> due to hardware memory corruption" and forces a
plain SIGBUS (ref 4.6).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE
from .flags import MF_ACTION_REQUIRED
from .poison_set import PoisonSet

if TYPE_CHECKING:
    from ..mm.vma import Vma
    from ..tasks import Thread
    from .core import MemoryFailure

EHWPOISON = 133          # Linux errno; not in the Python errno module
_DONE = (0, -EHWPOISON, -errno.EOPNOTSUPP)


class HardwarePoison:
    """Implements hugepfn.host.machine.HwPoisonHook."""

    def __init__(self, mf: "MemoryFailure") -> None:
        self.mf = mf
        self.pfns = PoisonSet()
        self.consumptions = 0

    def poison(self, pfn: int) -> bool:
        # the machine consults the hook on every access only once something is poisoned
        self.mf.machine.hw_poison = self
        return self.pfns.add(pfn)

    def clear(self, pfn: int) -> bool:
        """The memory was repaired (rewritten): loads no longer machine-check."""
        return self.pfns.discard(pfn)

    # -- HwPoisonHook -------------------------------------------------------------------------
    def is_poisoned(self, pfn: int) -> bool:
        return pfn in self.pfns

    def first_poisoned(self, pfn_lo: int, pfn_hi: int) -> int | None:
        return self.pfns.first_in(pfn_lo, pfn_hi)

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
