"""The batched steps memory_failure_pfn takes over many VMAs give exactly what the one-at-a-time
steps give: pfn_to_vma_pgoff's ``pgoffs``, TaskList.send_signals, kill_procs, collect_procs_pfn
with a vfio-pci callback (the nvgrace-gpu callback is covered by test_collect_equivalence)."""
from __future__ import annotations

import random

import pytest

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.memory_failure.collect import (ProcessOrder, ToKill, ToKillList, collect_procs_pfn, task_early_kill,
                                                 vma_address)
from hugepfn.host.memory_failure.flags import MF_ACTION_REQUIRED
from hugepfn.host.memory_failure.kill import kill_proc, kill_procs
from hugepfn.host.klog import KernelLog
from hugepfn.host import tasks as tasks_module
from hugepfn.host.tasks import TaskList

from .conftest import MiB

BAR0, BAR2 = 0x3800000000, 0x3900000000
VA = 0x7F0000000000


def vfio_machine(rng: random.Random, early_kill: int) -> Machine:
    m = Machine(kernel="7.0", dyndbg=False, sysctl={"vm.memory_failure_early_kill": early_kill})
    m.add_device("dev", "vfio-pci", "0000:01:00.0", bars=[PciBar(0, BAR0, 16 * MiB), PciBar(2, BAR2, 16 * MiB)])
    pids = []
    for i in range(rng.randint(1, 5)):
        pid = 100 + 10 * i
        m.create_process(pid, f"p{i}", [pid, pid + 1])
        pids.append(pid)
    for k in range(rng.randint(1, 20)):
        region = rng.choice([0, 0, 2])
        offset = rng.choice([0, 2 * MiB, 6 * MiB])
        length = rng.choice([2 * MiB, 4 * MiB, 10 * MiB])
        assert m.mmap(rng.choice(pids), "dev", region, offset, length, VA + k * (16 * MiB)) == 0
    return m


@pytest.mark.parametrize("variant", ["literal", "fixed"])
@pytest.mark.parametrize("seed", range(8))
def test_pgoffs_agree_with_one_call_per_vma(seed, variant):
    rng = random.Random(seed)
    m = vfio_machine(rng, 1)
    space = m.device("dev").pfn_address_space(0, variant)
    vmas = list(space.mapping)
    for pfn in (BAR0 >> 12, (BAR0 >> 12) + 0x300, (BAR0 >> 12) + 0x900, (BAR0 >> 12) + 0xFFF, BAR2 >> 12):
        want = [None if ret else pgoff for ret, pgoff in (space.pfn_to_vma_pgoff(v, pfn) for v in vmas)]
        assert space.pfn_to_vma_pgoff.pgoffs(vmas, pfn) == want


@pytest.mark.parametrize("variant", ["literal", "fixed"])
@pytest.mark.parametrize("seed", range(8))
def test_collect_with_a_vfio_pci_callback_equals_the_kernel_loop(seed, variant):
    rng = random.Random(seed)
    early_kill = rng.choice([0, 1])
    m = vfio_machine(rng, early_kill)
    space = m.device("dev").pfn_address_space(0, variant)
    current = rng.choice([None, *(p.threads[-1] for p in m.tasks)])
    for pfn in ((BAR0 >> 12) + 0x10, (BAR0 >> 12) + 0x700, (BAR0 >> 12) + 0xA00):
        want, lines = [], []
        for proc in m.tasks:
            t = task_early_kill(proc, current, early_kill)
            for vma in space.mapping if t is not None else ():
                ret, pgoff = space.pfn_to_vma_pgoff(vma, pfn) if vma.vm_mm is proc.mm else (1, None)
                if ret == 0:
                    want.append((t.tid, id(vma), vma_address(vma, pgoff), pgoff))
                    if vma_address(vma, pgoff) is None:
                        lines.append(f"Memory failure: Unable to find address {pgoff:x} in {t.comm}")
        got, mark = [], len(m.klog)
        collect_procs_pfn(space, pfn, current, early_kill, ProcessOrder(m.tasks), m.klog, got)
        assert [(tk.tsk.tid, id(tk.vma), tk.addr, tk.pgoff) for tk in got] == want
        assert all(type(tk) is ToKill and tk.size_shift == 12 for tk in got)
        assert m.klog.lines(mark) == lines


def twin_tasks() -> tuple[TaskList, TaskList]:
    def build():
        tasks = TaskList()
        for pid in (10, 20, 30):
            tasks.create_process(pid, f"c{pid}", [pid, pid + 1])
        tasks.thread(20).pending["SIGBUS"] = None          # already pending: nothing is queued again
        return tasks
    return build(), build()


def state(tasks: TaskList) -> tuple:
    return (tasks.journal, {t.tid: (t.received, dict(t.pending)) for t in tasks.threads.values()})


@pytest.mark.parametrize("with_runs", [False, True])
@pytest.mark.parametrize("signo", ["SIGBUS", "SIGRTMIN+1"])
@pytest.mark.parametrize("seed", range(6))
def test_send_signals_equals_one_send_signal_each(seed, signo, with_runs, monkeypatch):
    rng = random.Random(seed)
    batched, single = twin_tasks()
    monkeypatch.setitem(tasks_module.SIGNAL_NUMBERS, "SIGRTMIN+1", tasks_module.SIGRTMIN + 1)   # queues each
    tids = [rng.choice([10, 11, 20, 21, 30]) for _ in range(rng.randint(1, 30))]
    codes = [rng.choice([4, 5]) for _ in tids]
    addrs = [VA + rng.randrange(64) * 4096 for _ in tids]
    forced = [rng.random() < 0.3 for _ in tids]
    runs = None
    if with_runs:                   # the stretches of one thread, as collect_procs_pfn records them
        runs = []
        for i, t in enumerate(tids):
            if runs and runs[-1][0] is batched.thread(t):
                runs[-1] = (runs[-1][0], runs[-1][1], i + 1)
            else:
                runs.append((batched.thread(t), i, i + 1))
    got = batched.send_signals([batched.thread(t) for t in tids], signo, codes, addrs, 12, forced, runs)
    want = [single.send_signal(single.thread(t), signo, c, a, 12, f) for t, c, a, f in zip(tids, codes, addrs, forced)]
    assert got == want
    assert state(batched) == state(single)


@pytest.mark.parametrize("seed", range(10))
def test_kill_procs_equals_kill_proc_per_entry(seed):
    rng = random.Random(seed)
    batched, single = twin_tasks()
    logs = KernelLog(), KernelLog()
    tids = sorted(rng.choice([10, 11, 20, 30]) for _ in range(rng.randint(1, 25)))
    addrs = [None if rng.random() < 0.1 * (seed % 2) else VA + rng.randrange(64) * 4096 for _ in tids]
    current_tid = rng.choice([None, 10, 20])
    flags = rng.choice([0, MF_ACTION_REQUIRED])
    outs = []
    for tasks, klog in zip((batched, single), logs):
        tokill = [ToKill(tasks.thread(t), a, 12, None, 0) for t, a in zip(tids, addrs)]
        current = tasks.thread(current_tid) if current_tid else None
        if tasks is batched:
            outs.append(kill_procs(tasks, klog, tokill, 0x4000123, flags, current))
            continue
        sent = []
        for tk in tokill:
            if tk.addr is None:
                klog.printk(f"Memory failure: 0x4000123: forcibly killing {tk.tsk.comm}:{tk.tsk.tid} because "
                            "of failure to unmap corrupted page")
                sent.append(tasks.send_sigkill(tk.tsk))
            else:
                sent.append(kill_proc(tasks, klog, tk, 0x4000123, flags, current))
        outs.append(sent)
    assert outs[0] == outs[1]
    assert state(batched) == state(single)
    assert logs[0].lines() == logs[1].lines()


@pytest.mark.parametrize("variant", ["literal", "fixed"])
@pytest.mark.parametrize("seed", range(8))
def test_collect_into_a_to_kill_list_gives_the_entries_of_a_plain_list(seed, variant):
    """The ToKillList memory_failure_pfn keeps reads as the ToKill entries a plain list gets, its
    runs cover its entries in order, each with the thread of all its entries; two spaces append."""
    rng = random.Random(seed)
    early_kill = rng.choice([0, 1])
    m = vfio_machine(rng, early_kill)
    spaces = [m.device("dev").pfn_address_space(0, variant), m.device("dev").pfn_address_space(2, variant)]
    current = rng.choice([None, *(p.threads[-1] for p in m.tasks)])
    for pfn in ((BAR0 >> 12) + 0x10, (BAR0 >> 12) + 0x700, BAR2 >> 12):
        plain, columns = [], ToKillList()
        for space in spaces:
            for into in (plain, columns):
                collect_procs_pfn(space, pfn, current, early_kill, ProcessOrder(m.tasks), KernelLog(), into)
        assert len(columns) == len(plain) and list(columns) == plain and columns == plain
        assert [columns[i] for i in range(len(columns))] == plain
        assert all(type(tk) is ToKill and tk.size_shift == 12 for tk in columns)
        covered = 0
        for thread, start, end in columns.runs:
            assert start == covered < end and all(t is thread for t in columns.threads[start:end])
            covered = end
        assert covered == len(columns)


@pytest.mark.parametrize("current_tid", [None, 10, 20])
@pytest.mark.parametrize("seed", range(10))
def test_kill_procs_from_a_to_kill_list_equals_kill_proc_per_entry(seed, current_tid):
    rng = random.Random(seed)
    batched, single = twin_tasks()
    logs = KernelLog(), KernelLog()
    runs_of = [(t, rng.randint(1, 4)) for t in rng.sample([10, 11, 20, 21, 30], rng.randint(1, 5))]
    runs_of += [(rng.choice([10, 20]), 2)]                      # a thread in two runs (a second space)
    flags = rng.choice([0, MF_ACTION_REQUIRED])
    addrs = [VA + rng.randrange(64) * 4096 for _, n in runs_of for _ in range(n)]
    outs = []
    for tasks, klog in zip((batched, single), logs):
        current = tasks.thread(current_tid) if current_tid else None
        entries = [ToKill(tasks.thread(t), addr, 12, None, 0)
                   for t, addr in zip((t for t, n in runs_of for _ in range(n)), addrs)]
        if tasks is single:
            outs.append([kill_proc(tasks, klog, tk, 0x4000123, flags, current) for tk in entries])
            continue
        tokill, start = ToKillList(), 0
        for t, n in runs_of:
            part = entries[start:start + n]
            tokill.extend_columns([tk.tsk for tk in part], [tk.addr for tk in part], [None] * n, [0] * n,
                                  [(tasks.thread(t), 0, n)])
            start += n
        assert list(tokill) == entries
        outs.append(kill_procs(tasks, klog, tokill, 0x4000123, flags, current))
    assert outs[0] == outs[1]
    assert state(batched) == state(single)
    assert logs[0].lines() == logs[1].lines()
