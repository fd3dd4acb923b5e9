"""touch_range's runs of PTE faults (VmOperations.fault_run) must leave exactly what the same
touches make one fault at a time: page table, fault counts, log lines, memory_lock reads,
signals and the TouchResult."""
from __future__ import annotations

import dataclasses
import random

import pytest

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.mm.constants import PAGE_SIZE, PMD_SIZE
from hugepfn.host.mm.fault_run import fault_pte_run

VA = 0x7f0000000000
BAR_PHYS = 0x200000000000
BAR_SIZE = 64 << 20


def machine(kernel: str, thp: str, runs: bool) -> Machine:
    m = Machine(kernel=kernel, arch="x86_64", thp=thp, dyndbg=True)
    m.create_process(4242, "qemu")
    dev = m.add_device("gpu", bars=[PciBar(0, BAR_PHYS, BAR_SIZE)])
    if not runs:
        dev.vm_ops = dataclasses.replace(dev.vm_ops, fault_run=None)
    return m


def state(m: Machine, out) -> tuple:
    mm = m.tasks.process(4242).mm
    return (out, list(mm.pgtable.leaves()), mm.nr_faults, m.klog.lines(), m.tasks.journal,
            m.device("gpu").memory_lock.read_acquisitions, m.summary())


@pytest.mark.parametrize("seed", range(16))
def test_runs_equal_one_fault_at_a_time(seed):
    rng = random.Random(seed)
    kernel = rng.choice(["6.12", "7.0"])
    thp = rng.choice(["never", "always"])
    offset = rng.choice([0, PAGE_SIZE, 5 * PAGE_SIZE]) + rng.choice([0, PMD_SIZE])
    length = rng.choice([PMD_SIZE, 3 * PMD_SIZE + 7 * PAGE_SIZE, 8 * PMD_SIZE])
    va = VA + rng.choice([0, 3 * PAGE_SIZE, PMD_SIZE + PAGE_SIZE])
    pre = rng.sample(range(length // PAGE_SIZE), 20)
    start = va + rng.choice([0, 1, 17 * PAGE_SIZE + 9])
    end = va + length - rng.choice([0, 1, 3 * PAGE_SIZE])
    disable_at = rng.choice([None, length // 2])
    results = []
    for runs in (False, True):
        m = machine(kernel, thp, runs)
        assert m.mmap(4242, "gpu", 0, offset, length, va) == 0
        for page in pre:
            m.access(4242, va + page * PAGE_SIZE)
        if disable_at is None:
            out = m.touch_range(4242, start, end)
        else:
            first = m.touch_range(4242, start, va + disable_at)
            m.device("gpu").pdev.command_reg = 0            # memory disabled: faults now SIGBUS
            out = (first, m.touch_range(4242, va + disable_at, end))
        results.append(state(m, out))
    assert results[1] == results[0]


def test_a_run_needs_the_pte_table_and_stops_at_a_present_entry():
    m = machine("6.18", "never", True)      # a kernel where THP "never" gates pfnmaps
    assert m.mmap(4242, "gpu", 0, 0, 4 * PMD_SIZE, VA) == 0
    vma = m.find_vma(4242, VA)
    assert fault_pte_run(vma, VA, VA + PMD_SIZE, False) == 0        # no PTE table yet
    m.access(4242, VA)
    m.access(4242, VA + 9 * PAGE_SIZE)
    assert fault_pte_run(vma, VA + PAGE_SIZE, VA + PMD_SIZE, False) == 8
    assert fault_pte_run(vma, VA + 10 * PAGE_SIZE, VA + 4 * PMD_SIZE, False) == 502   # to the table's end
    assert vma.vm_mm.nr_faults == 2 + 8 + 502 and vma.vm_mm.pgtable.counts() == (0, 0, 512)
    m.device("gpu").pm_runtime_engaged = True                       # the driver declines
    m.access(4242, VA + PMD_SIZE)
    assert fault_pte_run(vma, VA + PMD_SIZE + PAGE_SIZE, VA + 2 * PMD_SIZE, False) == 0
