"""collect_procs_pfn walks the mapping by mm or the processes (whichever is shorter); both must
give exactly the kernel's processes x VMAs result, in the same order."""
from __future__ import annotations

import random

import pytest

from hugepfn.host.memory_failure.collect import ProcessOrder, collect_procs_pfn, task_early_kill, vma_address
from hugepfn.host.tasks import PF_MCE_EARLY, PF_MCE_PROCESS

from .conftest import MiB, USEMEM_PFN, nvgrace_machine


def kernel_literal(space, pfn, current, early_kill, tasks):
    """for_each_process x for every VMA of i_mmap, as mm/memory-failure.c does."""
    out = []
    for proc in tasks:
        t = task_early_kill(proc, current, early_kill)
        if t is None:
            continue
        for vma in space.mapping:
            if vma.vm_mm is not proc.mm:
                continue
            ret, pgoff = space.pfn_to_vma_pgoff(vma, pfn)
            if ret == 0:
                out.append((t.tid, id(vma), vma_address(vma, pgoff)))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_both_walks_equal_the_kernel_loop(seed):
    rng = random.Random(seed)
    m = nvgrace_machine(sysctl={"vm.memory_failure_early_kill": rng.choice([0, 1])})
    pids = [4242]
    for i in range(rng.randint(0, 6)):
        pid = rng.choice([50, 300, 9000, 20000]) + i
        m.create_process(pid, f"p{i}", [pid, pid + 100000])
        pids.append(pid)
    for proc in m.tasks:
        for t in proc.threads:
            t.flags = rng.choice([0, PF_MCE_PROCESS, PF_MCE_PROCESS | PF_MCE_EARLY])
    for k in range(rng.randint(1, 14)):
        pid = rng.choice(pids)
        offset = rng.choice([0, 0, 2 * MiB, 4 * MiB])
        length = rng.choice([2 * MiB, 4 * MiB, 8 * MiB])
        assert m.mmap(pid, "gpu", 4, offset, length, 0x7f0000000000 + k * (16 * MiB)) == 0
    space = next(s for s in m.device("gpu").registered if s.region == 4)
    current = rng.choice([None, m.tasks.thread(4242), m.tasks.thread(4243)])
    for pfn in (USEMEM_PFN + 0x10, USEMEM_PFN + 0x250, USEMEM_PFN + 0x700, USEMEM_PFN + 0x900):
        want = kernel_literal(space, pfn, current, m.sysctl["vm.memory_failure_early_kill"], m.tasks)
        got = []
        collect_procs_pfn(space, pfn, current, m.sysctl["vm.memory_failure_early_kill"], ProcessOrder(m.tasks),
                          m.klog, got)
        assert [(tk.tsk.tid, id(tk.vma), tk.addr) for tk in got] == want
