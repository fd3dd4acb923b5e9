"""The emulated host: kernel profile and settings, tasks, opened devices, kernel log, and the
user-space operations a process performs (mmap, munmap, madvise, memory accesses).

An access resolves through the page table or handle_mm_fault and turns the fault result
into the signal the architecture sends (docs/kernel-reference.md: fault results).  ``hw_poison`` is the hook for
hardware poison: None by default; when set, every completed load of a poisoned line is
handed to it as a consumption (the machine check path).  Stores consume nothing: a BAR is
mapped uncached, so a store is a posted write that the device takes as it is.

What a machine has is what its constructor says: ``memory_failure`` (the memory-failure model,
CONFIG_MEMORY_FAILURE=y by default, or its =n stubs, or a factory of another implementation)
and ``drivers`` (the registry the driver names of add_device come from).  Nothing that is
imported elsewhere changes a machine.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from . import kernel as kernel_mod
from .drivers.pci import PciBar, PciDevice
from .drivers.registry import DriverRegistry, default_registry
from .klog import KernelLog
from .memory_failure.core import MemoryFailure
from .mm.constants import PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE, VFIO_PCI_PGOFF_SHIFT, VM_READ, VM_WRITE
from .mm.fork import exit_process, fork_process
from .mm.pat import MemtypeTree
from .mm.fault import handle_mm_fault
from .mm.fault_run import fault_pte_run
from .mm.mm import MM
from .mm.mmap import do_madvise, do_mmap, do_mprotect, do_mremap, do_munmap
from .mm.pagetable import Leaf
from .mm.vm_fault import (VM_FAULT_HWPOISON, VM_FAULT_HWPOISON_LARGE, VM_FAULT_HINDEX_MASK,
                          VM_FAULT_HINDEX_SHIFT, VM_FAULT_NOPAGE, VM_FAULT_OOM, VM_FAULT_SIGBUS,
                          VM_FAULT_SIGSEGV, fault_name)
from .tasks import BUS_ADRERR, BUS_MCEERR_AR, SEGV_ACCERR, SEGV_MAPERR, Process, Signal, TaskList, Thread

if TYPE_CHECKING:
    from .drivers.vfio_pci_core import VfioPciCoreDevice
    from .mm.pfn_space import PfnAddressSpace
    from .mm.vma import Vma

DEFAULT_SYSCTL = {
    "vm.memory_failure_early_kill": 0,
    "vm.memory_failure_recovery": 1,
}
# hstate index -> page shift, for VM_FAULT_HWPOISON_LARGE's si_addr_lsb (x86: 2M, 1G)
HSTATE_SHIFTS = (21, 30)

_SIGNALLING = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE


class MemoryFailureModel(Protocol):
    """What the machine itself asks of its memory-failure model (hugepfn.host.memory_failure's
    MemoryFailure implements it, and much more)."""

    def register_pfn_address_space(self, space: "PfnAddressSpace") -> int: ...

    def unregister_pfn_address_space(self, space: "PfnAddressSpace") -> None: ...


class HwPoisonHook(Protocol):
    """What the machine asks about hardware poison (implemented by the memory-failure model)."""

    def is_poisoned(self, pfn: int, offset: int | None = None) -> bool:
        """Is the line at byte ``offset`` of page ``pfn`` bad (None: any byte of the page)?"""

    def first_poisoned(self, pfn_lo: int, pfn_hi: int) -> int | None:
        """Smallest poisoned pfn in [pfn_lo, pfn_hi), or None."""

    def consume(self, thread: Thread, vma: "Vma", addr: int, pfn: int, write: bool) -> None:
        """A load/store by ``thread`` hit poisoned ``pfn`` at ``addr`` (machine check)."""


class Clock:
    """Virtual time in milliseconds (msleep advances it; nothing really sleeps)."""

    def __init__(self) -> None:
        self.now_ms = 0

    def msleep(self, ms: int) -> None:
        self.now_ms += ms


class _AccessFields(NamedTuple):
    ret: int
    calls: list[tuple[int, int]]
    leaf: Leaf | None
    signals: list[Signal]
    consumed: bool


class AccessResult(_AccessFields):
    """What one access did: ``ret`` (vm_fault_t; 0 when it hit a mapping), ``calls`` ((order,
    result) of every driver call), ``leaf`` (what maps the address afterwards), ``signals``
    sent during the access, and whether it ``consumed`` hardware poison.  A tuple, so that
    Machine.access (the fault hot path) builds one at C speed."""
    __slots__ = ()

    def __new__(cls, ret: int, calls: list[tuple[int, int]], leaf: Leaf | None,
                signals: list[Signal] | None = None, consumed: bool = False) -> "AccessResult":
        return _new_tuple(cls, (ret, calls, leaf, signals if signals is not None else [], consumed))

    @property
    def ret_name(self) -> str:
        return fault_name(self.ret)

    def __repr__(self) -> str:
        return (f"AccessResult(ret={self.ret_name}, calls={[(o, fault_name(r)) for o, r in self.calls]}, "
                f"leaf={self.leaf}, signals={self.signals}, consumed={self.consumed})")


_new_tuple = tuple.__new__


@dataclass
class TouchResult:
    accesses: int = 0
    faults: int = 0
    signals: list[Signal] = field(default_factory=list)
    stopped_at: int | None = None               # address whose access raised a signal


class Machine:
    def __init__(self, kernel: str = "7.3", arch: str = "x86_64", thp: str = "always",
                 policy: str = "upstream", sysctl: dict[str, int] | None = None,
                 thp_sysfs_gates_pfnmap: bool | None = None, dyndbg: bool = True,
                 boot: dict | None = None,
                 memory_failure: bool | Callable[["Machine"], MemoryFailureModel] = True,
                 drivers: DriverRegistry | None = None) -> None:
        self.profile = kernel_mod.profile(kernel)
        self.arch = kernel_mod.arch(arch)
        if thp not in kernel_mod.THP_MODES:
            raise ValueError(f"unknown thp mode {thp!r} (choose from {', '.join(kernel_mod.THP_MODES)})")
        if policy not in kernel_mod.POLICIES:
            raise ValueError(f"unknown policy {policy!r} (choose from {', '.join(kernel_mod.POLICIES)})")
        self.thp = thp
        self.policy = policy
        self.thp_hw = True
        self.thp_sysfs_gates_pfnmap = (self.profile.thp_sysfs_gates_pfnmap if thp_sysfs_gates_pfnmap is None
                                       else thp_sysfs_gates_pfnmap)
        self.sysctl = dict(DEFAULT_SYSCTL)
        self.sysctl.update(sysctl or {})
        self.tasks = TaskList()
        self.clock = Clock()
        self.klog = KernelLog(self.clock)
        self.klog.dyndbg = dyndbg
        self.devices: dict[str, "VfioPciCoreDevice"] = {}
        self.zap_journal: list = []
        # x86 PAT memtype tracking (only whole-VMA remap_pfn_range uses it: the 6.1 profile)
        # ``boot``: kernel-global state that outlives processes and module reloads (the memtype
        # tree); a fresh dict is a freshly booted kernel
        self.boot = {} if boot is None else boot
        self.memtypes = MemtypeTree(self) if self.arch.name == "x86_64" else None
        self.call_path: tuple[str, ...] = ()      # the syscall path a WARN splat names (innermost first)
        self._warned: set[str] = set()
        self.hw_poison: HwPoisonHook | None = None
        self.drivers = drivers if drivers is not None else default_registry()
        # per-machine state of the models built around it (served devices, BAR placement cursor)
        self.extensions: dict[str, Any] = {}
        if callable(memory_failure):
            self.memory_failure = memory_failure(self)
        else:
            self.memory_failure = MemoryFailure(self, config_memory_failure=bool(memory_failure))

    def register_pfn_address_space(self, space: "PfnAddressSpace") -> int:
        """register_pfn_address_space(): 0 or -errno (-EOPNOTSUPP before v6.19 and with the =n stub)."""
        return self.memory_failure.register_pfn_address_space(space)

    def unregister_pfn_address_space(self, space: "PfnAddressSpace") -> None:
        self.memory_failure.unregister_pfn_address_space(space)

    def warn_once(self, key: str, file: str, line: int, func: str, frames: tuple[str, ...]) -> None:
        """WARN_ON_ONCE: the splat once per boot, as one line (the crosscheck folds the kernel's
        splat the same way: location, function, the call trace up to the syscall)."""
        if key in self._warned:
            return
        self._warned.add(key)
        self.klog.printk(f"WARNING: at {file}:{line} {func} (call trace: {', '.join(frames + self.call_path)})")

    # -- setup ------------------------------------------------------------------------------------
    def create_process(self, pid: int, comm: str, threads: list[int] | None = None) -> Process:
        return self.tasks.create_process(pid, comm, threads, MM(machine=self))

    def add_device(self, name: str, driver: str = "vfio-pci", bdf: str = "0000:01:00.0",
                   bars: list[PciBar] | None = None, pdev: PciDevice | None = None, open: bool = True,
                   **driver_args: Any) -> "VfioPciCoreDevice":
        """Bind ``driver`` (a name in ``self.drivers``) to a PCI device and open it (the host opens
        devices at start-up).  ``driver_args`` go to the driver class (its declared fields)."""
        if name in self.devices:
            raise ValueError(f"device {name!r} already exists")
        cls = self.drivers.get(driver)          # DriverError (a ValueError) listing the installed ones
        if pdev is None:
            pdev = PciDevice(bdf=bdf, bars={b.index: b for b in bars or []})
        if pdev.clock is None:
            pdev.clock = self.clock
        dev = cls(self, pdev, name, **driver_args)
        dev.registered_as = driver
        if open:
            ret = dev.open_device()
            if ret:
                raise OSError(-ret, f"opening device {name} failed: {errno.errorcode.get(-ret, ret)}")
        self.devices[name] = dev
        return dev

    def device(self, name: str) -> "VfioPciCoreDevice":
        try:
            return self.devices[name]
        except KeyError:
            raise KeyError(f"no device named {name!r}") from None

    # -- syscalls -------------------------------------------------------------------------------------
    def mmap(self, pid: int, device: str, region: int, offset: int, length: int, addr: int,
             shared: bool = True, prot: int = PROT_READ | PROT_WRITE) -> int:
        """mmap(addr, length, RW, MAP_FIXED|MAP_SHARED, devfd, region << 40 | offset): 0 or -errno."""
        proc = self.tasks.process(pid)
        dev = self.device(device)
        if offset % PAGE_SIZE or region < 0 or offset < 0:
            return -errno.EINVAL
        pgoff = (region << VFIO_PCI_PGOFF_SHIFT) + (offset >> PAGE_SHIFT)
        got = do_mmap(proc.mm, dev.file, addr, length, pgoff, shared, dev.mmap, prot=prot)
        return got if isinstance(got, int) else 0

    def munmap(self, pid: int, addr: int, length: int) -> int:
        return do_munmap(self.tasks.process(pid).mm, addr, length)

    def mprotect(self, pid: int, addr: int, length: int, prot: int) -> int:
        return do_mprotect(self.tasks.process(pid).mm, addr, length, prot)

    def mremap(self, pid: int, addr: int, length: int, new_length: int, flags: int, new_addr: int = 0) -> int:
        """mremap(2): the new address, or a negative errno."""
        return do_mremap(self.tasks.process(pid).mm, addr, length, new_length, flags, new_addr)

    def fork(self, pid: int, child: int) -> int:
        """fork(2) by ``pid``'s main thread: ``child`` gets a copy of the mm (dup_mmap)."""
        return fork_process(self, pid, child)

    def exit(self, pid: int) -> int:
        """The process exits: exit_mmap removes every VMA; its threads are gone."""
        return exit_process(self, pid)

    def madvise(self, pid: int, addr: int, length: int, advice: int) -> int:
        return do_madvise(self.tasks.process(pid).mm, addr, length, advice)

    def find_vma(self, pid: int, addr: int) -> "Vma | None":
        return self.tasks.process(pid).mm.find_vma(addr)

    # -- memory accesses ------------------------------------------------------------------------------
    def access(self, tid: int, addr: int, write: bool = False) -> AccessResult:
        """One load/store by thread ``tid`` at ``addr`` (the fault hot path: keep it lean)."""
        tasks = self.tasks
        thread = tasks.threads.get(tid)
        if thread is None:
            raise KeyError(f"no thread with tid {tid}")
        journal = tasks.journal
        mark = len(journal)
        mm = thread.process.mm
        calls: list[tuple[int, int]] = []
        vma = mm.find_vma(addr)
        if vma is None or not vma.vm_flags & (VM_WRITE if write else VM_READ):
            # bad_area: no VMA (SEGV_MAPERR) or an access the VMA does not permit (SEGV_ACCERR)
            self.tasks.force_sig_fault(thread, "SIGSEGV", SEGV_MAPERR if vma is None else SEGV_ACCERR, addr)
            return AccessResult(VM_FAULT_SIGSEGV, calls, None, journal[mark:])
        lookup = mm.pgtable.lookup
        leaf = lookup(addr)
        ret = 0
        if leaf is None:
            ret = handle_mm_fault(vma, addr, write, calls)
            if ret & _SIGNALLING:
                self._deliver_fault_result(thread, addr, ret)
            if ret & VM_FAULT_NOPAGE or ret == 0:
                leaf = lookup(addr)         # the retried instruction finds the new entry
        hook = self.hw_poison
        if hook is not None and leaf is not None:
            pfn = leaf.pfn_at(addr)
            if not write and hook.is_poisoned(pfn, addr & (PAGE_SIZE - 1)):
                # a load machine-checks; a store to the BAR's uncached mapping is posted and
                # consumes nothing.  The handling may unmap the address (hard-offline, split):
                # the result says what maps it afterwards.
                hook.consume(thread, vma, addr, pfn, write)
                return AccessResult(ret, calls, lookup(addr), journal[mark:], True)
        return _new_tuple(AccessResult, (ret, calls, leaf, journal[mark:] if len(journal) != mark else [], False))

    def _deliver_fault_result(self, thread: Thread, addr: int, ret: int) -> None:
        """What the arch fault handler does with a failed fault (x86 do_sigbus / arm64)."""
        if ret & VM_FAULT_OOM:
            return                      # pagefault_out_of_memory: the OOM killer, not modelled
        if ret & (VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE):
            if self.arch.logs_mce_kill:
                self.klog.printk(f"MCE: Killing {thread.comm}:{thread.tid} due to hardware memory "
                                 f"corruption fault at {addr:x}")
            lsb = PAGE_SHIFT
            if ret & VM_FAULT_HWPOISON_LARGE:
                lsb = HSTATE_SHIFTS[(ret & VM_FAULT_HINDEX_MASK) >> VM_FAULT_HINDEX_SHIFT]
            self.tasks.force_sig_mceerr(thread, BUS_MCEERR_AR, addr, lsb)
        elif ret & VM_FAULT_SIGBUS:
            self.tasks.force_sig_fault(thread, "SIGBUS", BUS_ADRERR, addr)
        elif ret & VM_FAULT_SIGSEGV:
            self.tasks.force_sig_fault(thread, "SIGSEGV", SEGV_ACCERR, addr)

    def touch_range(self, tid: int, start: int, end: int, stride: int = PAGE_SIZE,
                    write: bool = False) -> TouchResult:
        """Access start, start + stride, ... < end, as a loop in the task would.

        Accesses that hit an existing leaf take no fault, so the walk skips through a mapped
        leaf arithmetically instead of making one call per access; with a 4 KiB stride and no
        hardware poison, the first-touch faults of a PTE table's empty entries are taken as one
        run when the driver offers it (host/mm/fault_run.py).  The walk stops at the first
        access that raised a signal (a real loop would be in its SIGBUS handler)."""
        if stride <= 0 or stride % PAGE_SIZE:
            raise ValueError("stride must be a positive multiple of the page size")
        thread = self.tasks.thread(tid)
        mm = thread.mm
        pt = mm.pgtable
        out = TouchResult()
        hook = self.hw_poison
        addr = start
        runs = stride == PAGE_SIZE and hook is None
        while addr < end:
            leaf = pt.lookup(addr)
            if leaf is None:
                if runs:
                    vma = mm.find_vma(addr)
                    if vma is not None and (not write or vma.vm_flags & VM_WRITE):
                        done = fault_pte_run(vma, addr, end, write)
                        if done:
                            out.accesses += done
                            out.faults += done
                            addr += done << PAGE_SHIFT
                            continue
                res = self.access(tid, addr, write)
                out.accesses += 1
                out.faults += 1 if res.calls or res.ret else 0
                if res.signals:
                    out.signals += res.signals
                    out.stopped_at = addr
                    return out
                if res.leaf is None:
                    out.stopped_at = addr       # NOPAGE without a mapping: would loop forever
                    return out
                leaf = res.leaf
                addr += stride
                if hook is not None or addr >= end:
                    continue
            seg_end = min(end, leaf.va + leaf.size)
            if addr >= seg_end:
                continue
            n = (seg_end - addr + stride - 1) // stride      # touches inside this leaf
            if hook is not None:
                step_pages = stride >> PAGE_SHIFT
                pfn_lo = leaf.pfn_at(addr)
                pfn_hi = pfn_lo + (n - 1) * step_pages + 1
                hit = hook.first_poisoned(pfn_lo, pfn_hi)
                while hit is not None and (hit - pfn_lo) % step_pages:
                    hit = hook.first_poisoned(hit + 1, pfn_hi)
                if hit is not None:
                    k = (hit - pfn_lo) // step_pages
                    out.accesses += k
                    addr += k * stride
                    res = self.access(tid, addr, write)
                    out.accesses += 1
                    if res.signals:
                        out.signals += res.signals
                        out.stopped_at = addr
                        return out
                    addr += stride
                    continue
            out.accesses += n
            addr += n * stride
        return out

    # -- views ------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, int]]:
        """Per pid: live leaves per level and faults taken (the trace's summary)."""
        out = {}
        for proc in self.tasks:
            pud, pmd, pte = proc.mm.pgtable.counts()
            out[str(proc.pid)] = {"pud": pud, "pmd": pmd, "pte": pte, "faults": proc.mm.nr_faults}
        return out
