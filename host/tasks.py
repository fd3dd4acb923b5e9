"""Processes, threads and signal delivery (the parts of kernel/signal.c the model needs).

A Process owns an mm and threads; the machine-wide TaskList keeps processes in creation
order (for_each_process order).  Signals are recorded as Signal entries; a non-RT signal
that is already pending on the target thread is not queued again (legacy_queue), so the
entry is recorded with delivered=False.  A pending signal stays pending until the thread
handles it (Thread.handle_signals), which the scenario runner does when the thread next
runs in user space.
"""
from __future__ import annotations

from itertools import groupby, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

from .mm.mm import MM

if TYPE_CHECKING:
    pass

# Signal numbers (x86-64 / arm64 / generic).
SIGBUS = 7
SIGKILL = 9
SIGSEGV = 11
SIGRTMIN = 32
SIGNAL_NAMES = {SIGBUS: "SIGBUS", SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV"}
SIGNAL_NUMBERS = {v: k for k, v in SIGNAL_NAMES.items()}
_TID = attrgetter("tid")

# si_code values.
SI_KERNEL = 0x80
SEGV_MAPERR = 1
SEGV_ACCERR = 2
BUS_ADRERR = 2
BUS_MCEERR_AR = 4
BUS_MCEERR_AO = 5
BUS_CODE_NAMES = {BUS_ADRERR: "BUS_ADRERR", BUS_MCEERR_AR: "BUS_MCEERR_AR", BUS_MCEERR_AO: "BUS_MCEERR_AO"}
SEGV_CODE_NAMES = {SEGV_MAPERR: "SEGV_MAPERR", SEGV_ACCERR: "SEGV_ACCERR"}

# Per-thread flags (include/linux/sched.h).
PF_MCE_PROCESS = 0x00000080
PF_MCE_EARLY = 0x08000000


class Signal(NamedTuple):
    """One signal sent to one thread.  ``code`` is the si_code (BUS_MCEERR_AR, ...) or None
    for a signal without siginfo fields (SIGKILL); ``addr``/``addr_lsb`` likewise.  Immutable:
    a record of what was sent (a tuple, so memory_failure can build thousands cheaply)."""
    tid: int
    signo: str                  # "SIGBUS" | "SIGKILL" | "SIGSEGV"
    code: int | None = None
    addr: int | None = None
    addr_lsb: int | None = None
    delivered: bool = True
    forced: bool = False        # force_sig_*: unblocks / un-ignores the signal

    @property
    def code_name(self) -> str | None:
        if self.code is None:
            return None
        names = BUS_CODE_NAMES if self.signo == "SIGBUS" else SEGV_CODE_NAMES
        return names.get(self.code, str(self.code))

    def to_json(self) -> dict:
        out: dict = {"tid": self.tid, "signo": self.signo}
        if self.code is not None:
            out["code"] = self.code_name
        if self.addr is not None:
            out["addr"] = f"{self.addr:#x}"
        if self.addr_lsb is not None:
            out["addr_lsb"] = self.addr_lsb
        out["delivered"] = self.delivered
        return out


class Thread:
    """A task (struct task_struct) that belongs to a thread group."""
    __slots__ = ("tid", "process", "flags", "pending", "received")

    def __init__(self, tid: int, process: "Process", flags: int = 0) -> None:
        self.tid = tid
        self.process = process
        self.flags = flags                      # PF_MCE_PROCESS | PF_MCE_EARLY
        self.pending: dict[str, Signal] = {}    # signo -> the queued (first) instance
        self.received: list[Signal] = []        # every signal sent here, delivered or not

    @property
    def mm(self) -> MM | None:
        return self.process.mm

    @property
    def comm(self) -> str:
        return self.process.comm

    def has_pending(self, signo: str) -> bool:
        return signo in self.pending

    def handle_signals(self) -> list[Signal]:
        """The thread ran its handlers (returned to user space): nothing stays pending."""
        handled = list(self.pending.values())
        self.pending.clear()
        return handled

    def __repr__(self) -> str:
        return f"<Thread {self.process.comm}:{self.tid}>"


def thread_runs(threads: list[Thread]) -> list[tuple[Thread, int, int]]:
    """(thread, start, end) for each stretch of consecutive entries of ``threads`` that hold the
    same thread, in order and covering the list."""
    runs, start = [], 0
    for thread, run in groupby(threads):
        end = start + sum(1 for _ in run)
        runs.append((thread, start, end))
        start = end
    return runs


class Process:
    """A thread group: pid (= tid of the main thread), comm, threads and an mm (None for a
    kernel thread)."""

    def __init__(self, pid: int, comm: str, mm: MM | None) -> None:
        self.pid = pid
        self.comm = comm
        self.mm = mm
        if mm is not None:
            mm.owner = self
        self.threads: list[Thread] = []

    @property
    def main_thread(self) -> Thread:
        return self.threads[0]

    @property
    def is_kthread(self) -> bool:
        return self.mm is None

    def thread(self, tid: int) -> Thread:
        for t in self.threads:
            if t.tid == tid:
                return t
        raise KeyError(tid)

    def __repr__(self) -> str:
        return f"<Process {self.comm}:{self.pid} threads={[t.tid for t in self.threads]}>"


class TaskList:
    """All user processes in creation order, their threads by tid, and the journal of
    every signal sent (``journal``; a consumer remembers its length and reads what follows)."""

    def __init__(self) -> None:
        self.processes: dict[int, Process] = {}
        self.threads: dict[int, Thread] = {}
        self.journal: list[Signal] = []
        self._kworker: Thread | None = None

    def create_process(self, pid: int, comm: str, tids: list[int] | None = None,
                       mm: MM | None = None) -> Process:
        """A user process with its own mm; ``tids[0]`` must be the pid (main thread)."""
        tids = list(tids) if tids else [pid]
        if tids[0] != pid:
            raise ValueError(f"process {pid}: the first thread must be the main thread {pid}, got {tids[0]}")
        if pid in self.processes:
            raise ValueError(f"pid {pid} already exists")
        for tid in tids:
            if tid in self.threads or tids.count(tid) > 1:
                raise ValueError(f"tid {tid} already exists")
            if tid <= 0:
                raise ValueError(f"tid {tid} must be positive")
        proc = Process(pid, comm, mm if mm is not None else MM())
        for tid in tids:
            thread = Thread(tid, proc)
            proc.threads.append(thread)
            self.threads[tid] = thread
        self.processes[pid] = proc
        return proc

    def remove_process(self, pid: int) -> None:
        """The process has exited: its pid and tids are free again."""
        proc = self.processes.pop(pid)
        for thread in proc.threads:
            self.threads.pop(thread.tid, None)

    def add_thread(self, process: Process, tid: int) -> Thread:
        """clone(CLONE_THREAD) from the main thread: the new thread inherits its PF_MCE_* flags."""
        if tid in self.threads:
            raise ValueError(f"tid {tid} already exists")
        thread = Thread(tid, process, process.main_thread.flags & (PF_MCE_PROCESS | PF_MCE_EARLY))
        process.threads.append(thread)
        self.threads[tid] = thread
        return thread

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self.processes.values()))

    def process(self, pid: int) -> Process:
        try:
            return self.processes[pid]
        except KeyError:
            raise KeyError(f"no process with pid {pid}") from None

    def thread(self, tid: int) -> Thread:
        try:
            return self.threads[tid]
        except KeyError:
            raise KeyError(f"no thread with tid {tid}") from None

    @property
    def kworker(self) -> Thread:
        """A kernel worker thread (no mm), the `current` of memory_failure_queue's work item.
        Not part of the process list (it would be skipped there anyway: no mm)."""
        if self._kworker is None:
            proc = Process(0, "kworker/0:1", None)
            self._kworker = Thread(0, proc)
            proc.threads.append(self._kworker)
        return self._kworker

    # -- signal delivery ----------------------------------------------------------------------
    def send_signal(self, thread: Thread, signo: str, code: int | None = None, addr: int | None = None,
                    addr_lsb: int | None = None, forced: bool = False) -> Signal:
        """Queue a signal on ``thread`` (thread-directed, as force_sig_* and send_sig to a task
        are).  A non-RT signal already pending there is not queued again: delivered=False."""
        signum = SIGNAL_NUMBERS.get(signo)
        if signum is None:
            raise ValueError(f"unknown signal {signo!r}")
        delivered = not (signum < SIGRTMIN and signo in thread.pending)
        sig = Signal(thread.tid, signo, code, addr, addr_lsb, delivered, forced)
        if delivered:
            thread.pending[signo] = sig
        thread.received.append(sig)
        self.journal.append(sig)
        return sig

    def send_signals(self, threads: list[Thread], signo: str, codes: Iterable[int | None],
                     addrs: Iterable[int | None], addr_lsb: int | None, forced: Iterable[bool],
                     runs: list[tuple[Thread, int, int]] | None = None) -> list[Signal]:
        """send_signal(threads[i], signo, codes[i], addrs[i], addr_lsb, forced[i]) for each i in
        turn, in one go (memory_failure signals every VMA of every selected process): exactly
        the Signals, pending state, received lists and journal that the calls give.

        The pending state and the received lists are kept per stretch of consecutive signals to
        one thread: ``runs`` gives them as thread_runs(threads) would (collect_procs_pfn knows
        them already), else they are worked out here."""
        signum = SIGNAL_NUMBERS.get(signo)
        if signum is None:
            raise ValueError(f"unknown signal {signo!r}")
        if not threads:
            return []
        realtime = signum >= SIGRTMIN       # real-time signals queue every instance
        # the tuples built by map() and zip(): no Python-level call per signal
        sigs = list(map(tuple.__new__, repeat(Signal), zip(map(_TID, threads), repeat(signo), codes, addrs,
                                                           repeat(addr_lsb), repeat(realtime), forced)))
        for thread, start, end in (runs if runs is not None else thread_runs(threads)):
            pending = thread.pending
            if realtime:                    # each thread's last one is the one pending
                pending[signo] = sigs[end - 1]
            elif signo not in pending:      # each thread's first one is queued unless one is pending
                sig = sigs[start]
                sigs[start] = pending[signo] = tuple.__new__(Signal, (*sig[:5], True, sig[6]))
            thread.received += sigs[start:end]
        self.journal += sigs
        return sigs

    def force_sig_fault(self, thread: Thread, signo: str, code: int, addr: int) -> Signal:
        """force_sig_fault: what the arch fault handler sends for VM_FAULT_SIGBUS/SIGSEGV."""
        return self.send_signal(thread, signo, code, addr, None, forced=True)

    def force_sig_mceerr(self, thread: Thread, code: int, addr: int, addr_lsb: int) -> Signal:
        """force_sig_mceerr: SIGBUS with BUS_MCEERR_AR/AO to the current thread."""
        return self.send_signal(thread, "SIGBUS", code, addr, addr_lsb, forced=True)

    def send_sig_mceerr(self, code: int, addr: int, addr_lsb: int, thread: Thread) -> Signal:
        """send_sig_mceerr (argument order as the kernel's): blockable advisory SIGBUS."""
        return self.send_signal(thread, "SIGBUS", code, addr, addr_lsb)

    def send_sigkill(self, thread: Thread) -> Signal:
        """send_sig(SIGKILL, t, 1): a private SIGKILL to one task."""
        return self.send_signal(thread, "SIGKILL")
