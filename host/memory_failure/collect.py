"""collect_procs_pfn and task_early_kill: who memory_failure_pfn signals (docs/kernel-reference.md: memory_failure).

The kernel walks every process (for_each_process) and, for each selected thread, every
VMA of the mapping's i_mmap.  The model produces the identical ordered list without the
processes x VMAs product: it walks the mapping's VMAs once (tree order), buckets them by mm,
and visits the processes in process-list order (all of them, or only those owning a bucket,
whichever is fewer).  task_early_kill has no side effects and a process without a VMA of the
mapping adds nothing, so skipping the others changes no result.
"""
from __future__ import annotations

from functools import partial
from itertools import compress, repeat
from typing import TYPE_CHECKING, Iterator, NamedTuple

from ..mm.constants import PAGE_SHIFT
from ..tasks import PF_MCE_EARLY, PF_MCE_PROCESS, Process, TaskList, Thread, thread_runs

if TYPE_CHECKING:
    from ..klog import KernelLog
    from ..mm.pfn_space import PfnAddressSpace
    from ..mm.vma import Vma

PR_PREFIX = "Memory failure: "


class ToKill(NamedTuple):
    """struct to_kill: the selected thread, the user address (None = -EFAULT) and size_shift."""
    tsk: Thread
    addr: int | None
    size_shift: int
    vma: "Vma"
    pgoff: int


_new_tuple = tuple.__new__     # builds a ToKill without NamedTuple.__new__'s Python-level call


def _tokill_entries(threads: list, addrs: list, vmas: list, pgoffs: list) -> Iterator[ToKill]:
    """The ToKill tuples of the columns, built by map() and zip(): no Python-level call each."""
    return map(_new_tuple, repeat(ToKill), zip(threads, addrs, repeat(PAGE_SHIFT), vmas, pgoffs))


class ToKillList:
    """The to_kill list of memory_failure_pfn (collect_procs_pfn fills it, kill_procs signals
    every entry; the kernel then frees them), kept as columns: per entry its thread, address
    (None: -EFAULT), VMA and pgoff (size_shift is PAGE_SHIFT for every entry on the pfn path),
    and ``runs``, (thread, start, end) for each stretch of entries that share a thread, as
    collect_procs_pfn appends them (one per selected thread and space).

    Read as a sequence (len, iteration, indexing, == with a list) it is the list of ToKill
    entries the kernel builds, each made when first read: with 10,000 signalled VMAs nothing
    but kill_procs needs them, and it signals from the columns."""
    __slots__ = ("threads", "addrs", "vmas", "pgoffs", "runs", "_entries")
    size_shift = PAGE_SHIFT

    def __init__(self) -> None:
        self.threads: list[Thread] = []
        self.addrs: list[int | None] = []
        self.vmas: list = []
        self.pgoffs: list[int] = []
        self.runs: list[tuple[Thread, int, int]] = []
        self._entries: list[ToKill] | None = None

    def extend_columns(self, threads: list, addrs: list, vmas: list, pgoffs: list,
                       runs: list[tuple[Thread, int, int]]) -> None:
        """Append entries; ``runs`` index the lists given (in order, covering them all).  The
        lists become the list's own when it is empty (the usual case: one space per pfn)."""
        if not self.threads:
            self.threads, self.addrs, self.vmas, self.pgoffs, self.runs = threads, addrs, vmas, pgoffs, runs
        else:
            base = len(self.threads)
            self.runs += [(thread, base + start, base + end) for thread, start, end in runs]
            self.threads += threads
            self.addrs += addrs
            self.vmas += vmas
            self.pgoffs += pgoffs
        self._entries = None

    @property
    def entries(self) -> list[ToKill]:
        if self._entries is None:
            self._entries = list(_tokill_entries(self.threads, self.addrs, self.vmas, self.pgoffs))
        return self._entries

    def __len__(self) -> int:
        return len(self.threads)

    def __iter__(self) -> Iterator[ToKill]:
        return iter(self.entries)

    def __getitem__(self, index):
        return self.entries[index]

    def __eq__(self, other) -> bool:
        if isinstance(other, ToKillList):
            other = other.entries
        return isinstance(other, list) and self.entries == other

    __hash__ = None         # mutable, compared by its entries

    def __repr__(self) -> str:
        return f"ToKillList({self.entries!r})"


def _unable_line(pgoff: int, comm: str) -> str:
    return f"{PR_PREFIX}Unable to find address {pgoff:x} in {comm}"


def find_early_kill_thread(proc: Process, early_kill_sysctl: int) -> Thread | None:
    """The first thread that asked for early kill (PF_MCE_PROCESS|PF_MCE_EARLY), or that left the
    policy to the sysctl while vm.memory_failure_early_kill is 1.  Explicit "late" threads skip."""
    for t in proc.threads:
        flags = t.flags
        if flags & PF_MCE_PROCESS:
            if flags & PF_MCE_EARLY:
                return t
        elif early_kill_sysctl:
            return t
    return None


def task_early_kill(proc: Process, current: Thread | None, early_kill_sysctl: int,
                    force_early: bool = True) -> Thread | None:
    """NULL for a kernel thread; ``current`` itself when it shares the process's mm (force_early
    is always true on the pfn path); else the early-kill thread or None."""
    mm = proc.mm
    if mm is None:
        return None
    if force_early and current is not None and current.process.mm is mm:
        return current
    return find_early_kill_thread(proc, early_kill_sysctl)


class ProcessOrder:
    """Position of each process in the process list (for_each_process order), cached until a
    process is created."""

    def __init__(self, tasks: TaskList) -> None:
        self.tasks = tasks
        self._n = -1
        self._pos: dict[int, int] = {}

    def position(self, proc: Process) -> int:
        procs = self.tasks.processes
        if len(procs) != self._n:
            self._pos = {id(p): i for i, p in enumerate(procs.values())}
            self._n = len(procs)
        return self._pos[id(proc)]


def vma_address(vma: "Vma", pgoff: int) -> int | None:
    """vma_address(vma, pgoff, 1): the user address of file page ``pgoff``, or None (-EFAULT)."""
    if pgoff < vma.vm_pgoff:
        return None
    addr = vma.vm_start + ((pgoff - vma.vm_pgoff) << PAGE_SHIFT)
    return addr if addr < vma.vm_end else None


def _by_mapping(space: "PfnAddressSpace", order: ProcessOrder) -> list[tuple[Process, list]]:
    """(process, its VMAs of the mapping in tree order) groups, in process-list order.  Cost
    O(mms mapping it): the bucketing itself is the mapping's, kept between calls (by_mm)."""
    groups = [(vmas[0].vm_mm.owner, vmas) for vmas in space.mapping.by_mm().values()]
    if len(groups) > 1:
        groups.sort(key=lambda g: order.position(g[0]))
    return groups


def _selected(space: "PfnAddressSpace", current: Thread | None, early_kill_sysctl: int,
              order: ProcessOrder) -> Iterator[tuple[Thread, list]]:
    """(selected thread, its process's VMAs of the mapping in tree order), in process-list order.

    Few mms mapping it (an eighth of the processes or fewer): ask task_early_kill only for their
    owners, sorted into process-list order.  Otherwise walk the process list and ask the owners
    as they come (a dict lookup each, no sort).  Either way O(processes) at most, once the
    mapping has bucketed its VMAs by mm (AddressSpace.by_mm)."""
    by_mm = space.mapping.by_mm()
    if len(by_mm) * 8 <= len(order.tasks.processes):     # a few mms: sort those (a key call each)
        for proc, vmas in _by_mapping(space, order):
            t = task_early_kill(proc, current, early_kill_sysctl)
            if t is not None:
                yield t, vmas
        return
    # task_early_kill(proc, current, early_kill_sysctl), inline for a process with VMAs of the
    # mapping (so with an mm): with 1,000 processes, a call less each is a tenth of the walk
    current_mm = current.process.mm if current is not None else None
    for proc in order.tasks.processes.values():
        mm = proc.mm
        vmas = by_mm.get(id(mm))
        if vmas is not None:
            t = current if mm is current_mm else find_early_kill_thread(proc, early_kill_sysctl)
            if t is not None:
                yield t, vmas


def _pgoffs_one_by_one(callback, vmas, pfn: int) -> list[int | None]:
    """``pgoffs`` for a callback without one (a driver's own pfn_to_vma_pgoff): a call per VMA."""
    return [None if ret else pgoff for ret, pgoff in (callback(vma, pfn) for vma in vmas)]


def collect_procs_pfn(space: "PfnAddressSpace", pfn: int, current: Thread | None, early_kill_sysctl: int,
                      order: ProcessOrder, klog: "KernelLog", tokill: "list[ToKill] | ToKillList") -> None:
    """Append a ToKill for every (selected thread, VMA of the space's mapping in that thread's mm)
    for which the driver's pfn_to_vma_pgoff succeeds; no de-duplication (see _selected for
    how the processes x VMAs product is avoided).  ``tokill`` is a plain list of ToKill, or
    the ToKillList memory_failure_pfn keeps (the same entries, as columns)."""
    callback = space.pfn_to_vma_pgoff
    pgoffs_of = getattr(callback, "pgoffs", None) or partial(_pgoffs_one_by_one, callback)
    # One flat list of (thread, VMA) entries, then each step over all of them at once: with
    # 10,000 VMAs of 1,000 processes, per-process steps would cost as much as the VMAs.
    threads: list[Thread] = []
    vmas: list = []
    runs: list[tuple[Thread, int, int]] = []       # (thread, start, end) of each thread's entries
    for t, group in _selected(space, current, early_kill_sysctl, order):     # (by_mm has no empty group)
        start = len(vmas)
        threads += repeat(t, len(group))
        vmas += group
        runs.append((t, start, len(vmas)))
    pgoffs = pgoffs_of(vmas, pfn)
    if None in pgoffs:                      # the callback refused some: they are skipped
        answered = [pgoff is not None for pgoff in pgoffs]
        threads, vmas = list(compress(threads, answered)), list(compress(vmas, answered))
        pgoffs = [pgoff for pgoff in pgoffs if pgoff is not None]
        runs = thread_runs(threads)
    # vma_address(), inline: the address, None where it falls outside the VMA
    addrs = [addr if pgoff >= (vm_pgoff := vma.vm_pgoff)
             and (addr := vma.vm_start + ((pgoff - vm_pgoff) << PAGE_SHIFT)) < vma.vm_end else None
             for vma, pgoff in zip(vmas, pgoffs)]
    if None in addrs:
        for t, pgoff, addr in zip(threads, pgoffs, addrs):
            if addr is None:
                klog.lazy(_unable_line, pgoff, t.comm)
    if type(tokill) is ToKillList:
        tokill.extend_columns(threads, addrs, vmas, pgoffs, runs)
    else:
        tokill.extend(_tokill_entries(threads, addrs, vmas, pgoffs))
