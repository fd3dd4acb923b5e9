"""kill_procs / kill_proc for the pfn path (docs/kernel-reference.md: memory_failure): forcekill is always true there.

Entries are handled in list order; an entry whose address could not be found gets SIGKILL
with the "forcibly killing" line, every other entry a SIGBUS: BUS_MCEERR_AR when the entry's
thread is ``current`` (MF_ACTION_REQUIRED is always set on this path), else BUS_MCEERR_AO.
The task list records a signal that was already pending as delivered=False.
"""
from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING

from ..tasks import BUS_MCEERR_AO, BUS_MCEERR_AR, Signal, TaskList, Thread, thread_runs
from .collect import ToKillList
from .flags import MF_ACTION_REQUIRED, PR_PREFIX

if TYPE_CHECKING:
    from ..klog import KernelLog
    from .collect import ToKill


def _sending_line(pfn: int, comm: str, tid: int) -> str:
    return f"{PR_PREFIX}{pfn:#x}: Sending SIGBUS to {comm}:{tid} due to hardware memory corruption"


def _killing_line(pfn: int, comm: str, tid: int) -> str:
    return f"{PR_PREFIX}{pfn:#x}: forcibly killing {comm}:{tid} because of failure to unmap corrupted page"


def kill_proc(tasks: TaskList, klog: "KernelLog", tk: "ToKill", pfn: int, flags: int,
              current: Thread | None) -> Signal:
    t = tk.tsk
    klog.lazy(_sending_line, pfn, t.comm, t.tid)       # formatted when the log is read
    if flags & MF_ACTION_REQUIRED and t is current:
        return tasks.force_sig_mceerr(t, BUS_MCEERR_AR, tk.addr, tk.size_shift)
    return tasks.send_sig_mceerr(BUS_MCEERR_AO, tk.addr, tk.size_shift, t)


_THREAD, _ADDR, _SIZE_SHIFT = attrgetter("tsk"), attrgetter("addr"), attrgetter("size_shift")


def kill_procs(tasks: TaskList, klog: "KernelLog", tokill: "list[ToKill] | ToKillList", pfn: int, flags: int,
               current: Thread | None) -> list[Signal]:
    """kill_proc (or the forced SIGKILL) for every entry, in order.  When every entry has an
    address and all share one size_shift (the common case: nobody is forcibly killed), all are
    sent in one go: the same log lines and Signals as one call each, without the per-entry calls
    (from a ToKillList's columns and runs, as collect_procs_pfn left them)."""
    if not tokill:
        return []
    if type(tokill) is ToKillList:
        addrs, threads, runs, size_shifts = tokill.addrs, tokill.threads, tokill.runs, {tokill.size_shift}
    else:
        addrs, threads, runs = list(map(_ADDR, tokill)), None, None
        size_shifts = set(map(_SIZE_SHIFT, tokill))
    if None in addrs or len(size_shifts) > 1:
        sent: list[Signal] = []
        for tk in tokill:
            if tk.addr is None:
                t = tk.tsk
                klog.lazy(_killing_line, pfn, t.comm, t.tid)
                sent.append(tasks.send_sigkill(t))
            else:
                sent.append(kill_proc(tasks, klog, tk, pfn, flags, current))
        return sent
    if runs is None:
        threads = list(map(_THREAD, tokill))
        runs = thread_runs(threads)
    # a thread's lines in a row share one entry
    line_args = {t: (pfn, t.comm, t.tid) for t, _, _ in runs}
    klog.lazy_runs(_sending_line, [(line_args[t], end - start) for t, start, end in runs])
    if flags & MF_ACTION_REQUIRED and current in line_args:     # force_sig_mceerr for current's
        codes = [BUS_MCEERR_AR if t is current else BUS_MCEERR_AO for t in threads]
        forced = [t is current for t in threads]
    else:                                                       # send_sig_mceerr for all
        codes, forced = repeat(BUS_MCEERR_AO), repeat(False)
    [size_shift] = size_shifts
    return tasks.send_signals(threads, "SIGBUS", codes, addrs, size_shift, forced, runs)
