"""memory_failure() entry and memory_failure_pfn() on device pfns (docs/kernel-reference.md: memory_failure)."""
from __future__ import annotations

import errno

import pytest

from hugepfn.host.memory_failure import (MF_ACTION_REQUIRED, MF_SW_SIMULATED, KernelPanic, memory_failure_of)
from hugepfn.host.scenario.steps import PR_MCE_KILL, PR_MCE_KILL_EARLY, PR_MCE_KILL_LATE, PR_MCE_KILL_SET, prctl
from hugepfn.host.tasks import PF_MCE_PROCESS

from .conftest import GiB, MiB, USEMEM_PFN, VA, nvgrace_machine, sigs

PFN = USEMEM_PFN + 0x123
RECOVERED = f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Recovered"


def mapped(kernel="7.0", **kw):
    m = nvgrace_machine(kernel, **kw)
    assert m.mmap(4242, "gpu", 4, 0, 2 * GiB, VA) == 0
    return m


def run(m, pfn=PFN, flags=0, current=None):
    mark, jmark = len(m.klog), len(m.tasks.journal)
    mfo = memory_failure_of(m)
    tmark = len(mfo.trace)
    ret = mfo.memory_failure(pfn, flags, current)
    return ret, m.klog.lines(mark), m.tasks.journal[jmark:], mfo.trace.lines[tmark:]


def test_unregistered_pfn_is_ignored_with_ebusy_and_no_signal():
    m = mapped()
    ret, log, signals, trace = run(m, 0x9000000, current=m.tasks.thread(4242))
    assert ret == -errno.EBUSY
    assert log == ["Memory failure: 0x9000000: recovery action for non struct page pfn: Ignored"]
    assert signals == []
    assert trace == ["ras:memory_failure_event: pfn 0x9000000: recovery action for non struct page pfn: "
                     "Ignored"]


def test_kworker_and_no_early_kill_signals_nobody_but_recovers():
    m = mapped()
    ret, log, signals, trace = run(m)
    assert (ret, log, signals) == (0, [RECOVERED], [])
    assert trace == [f"ras:memory_failure_event: pfn {PFN:#x}: recovery action for non struct page pfn: "
                     "Recovered"]


def test_current_gets_forced_action_required_at_the_page_address_with_lsb_12_under_a_pud():
    m = mapped()
    m.access(4242, VA)                                    # PUD leaf maps the first GiB
    assert m.tasks.process(4242).mm.pgtable.counts() == (1, 0, 0)
    ret, log, signals, _ = run(m, current=m.tasks.thread(4243))
    assert ret == 0
    assert sigs(signals) == [(4243, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True)]
    assert signals[0].forced
    assert log == [f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4243 due to hardware memory corruption",
                   RECOVERED]
    assert m.tasks.process(4242).mm.pgtable.counts() == (1, 0, 0)     # upstream unmaps nothing


def test_action_required_is_forced_even_without_the_flag():
    m = mapped()
    _, _, signals, _ = run(m, flags=MF_SW_SIMULATED, current=m.tasks.thread(4242))
    assert [s.code_name for s in signals] == ["BUS_MCEERR_AR"]


def test_early_kill_sysctl_selects_the_first_thread_of_other_processes_for_ao():
    m = mapped(sysctl={"vm.memory_failure_early_kill": 1})
    m.create_process(5000, "vmm2", [5000, 5001])
    assert m.mmap(5000, "gpu", 4, 0, GiB, VA) == 0
    _, log, signals, _ = run(m)
    assert sigs(signals) == [(4242, "SIGBUS", "BUS_MCEERR_AO", VA + 0x123000, 12, True),
                             (5000, "SIGBUS", "BUS_MCEERR_AO", VA + 0x123000, 12, True)]
    assert not signals[0].forced
    assert log == [f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4242 due to hardware memory corruption",
                   f"Memory failure: {PFN:#x}: Sending SIGBUS to vmm2:5000 due to hardware memory corruption",
                   RECOVERED]


def test_pr_mce_kill_flags_select_the_first_early_thread_and_skip_explicit_late():
    m = mapped(sysctl={"vm.memory_failure_early_kill": 1})
    t1, t2 = m.tasks.thread(4242), m.tasks.thread(4243)
    assert prctl(t1, PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE) == 0
    assert prctl(t2, PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY) == 0
    _, _, signals, _ = run(m)
    assert sigs(signals) == [(4243, "SIGBUS", "BUS_MCEERR_AO", VA + 0x123000, 12, True)]
    assert prctl(t2, PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE) == 0
    assert t2.flags & PF_MCE_PROCESS
    _, log, signals, _ = run(m)                          # every thread explicitly late: skipped
    assert signals == [] and log == [RECOVERED]


def test_early_thread_without_the_sysctl():
    m = mapped()
    prctl(m.tasks.thread(4243), PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY)
    _, _, signals, _ = run(m)
    assert sigs(signals) == [(4243, "SIGBUS", "BUS_MCEERR_AO", VA + 0x123000, 12, True)]


def test_current_wins_over_an_early_thread_of_its_own_process():
    m = mapped()
    prctl(m.tasks.thread(4243), PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY)
    _, _, signals, _ = run(m, current=m.tasks.thread(4242))
    assert sigs(signals) == [(4242, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True)]


def test_no_deduplication_one_entry_per_vma_and_the_second_signal_coalesces():
    m = mapped()
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA + 4 * GiB) == 0
    _, log, signals, _ = run(m, current=m.tasks.thread(4242))
    # i_mmap tree order: same pgoff, link order (the 2 GiB VMA first)
    assert sigs(signals) == [(4242, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True),
                             (4242, "SIGBUS", "BUS_MCEERR_AR", VA + 4 * GiB + 0x123000, 12, False)]
    assert log.count(f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4242 due to hardware memory corruption") == 2


def test_signals_follow_process_list_order_not_pid_or_vma_link_order():
    m = nvgrace_machine(sysctl={"vm.memory_failure_early_kill": 1})
    m.create_process(100, "late-born-low-pid")
    assert m.mmap(100, "gpu", 4, 0, GiB, VA) == 0          # linked into i_mmap first
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA) == 0
    _, _, signals, _ = run(m)
    assert [s.tid for s in signals] == [4242, 100]


def test_vma_at_a_later_offset_is_skipped():
    m = nvgrace_machine()
    assert m.mmap(4242, "gpu", 4, 2 * MiB, 2 * MiB, VA) == 0     # region offset 2 MiB: pfn 0x123 is before it
    _, log, signals, _ = run(m, current=m.tasks.thread(4242))
    assert signals == [] and log == [RECOVERED]


def test_literal_nvgrace_callback_kills_the_owner_of_a_vma_that_ends_before_the_pfn():
    m = nvgrace_machine()
    assert m.mmap(4242, "gpu", 4, 0, 2 * MiB, VA) == 0           # maps pfns 0x4000000..0x40001ff only
    far = USEMEM_PFN + 0x300
    ret, log, signals, _ = run(m, far, current=m.tasks.thread(4243))
    pgoff = (4 << 28) + 0x300
    assert ret == 0
    assert sigs(signals) == [(4243, "SIGKILL", None, None, None, True)]
    assert log == [f"Memory failure: Unable to find address {pgoff:x} in qemu",
                   f"Memory failure: {far:#x}: forcibly killing qemu:4243 because of failure to unmap corrupted page",
                   f"Memory failure: {far:#x}: recovery action for non struct page pfn: Recovered"]


def test_fixed_nvgrace_callback_skips_that_vma():
    m = nvgrace_machine(pgoff_callback="fixed")
    assert m.mmap(4242, "gpu", 4, 0, 2 * MiB, VA) == 0
    far = USEMEM_PFN + 0x300
    ret, log, signals, _ = run(m, far, current=m.tasks.thread(4243))
    assert (ret, signals) == (0, [])
    assert log == [f"Memory failure: {far:#x}: recovery action for non struct page pfn: Recovered"]


def test_resmem_pfn_reaches_its_own_space():
    from .conftest import RESMEM_PFN
    m = nvgrace_machine()
    assert m.mmap(4242, "gpu", 2, 0, GiB, VA) == 0
    _, _, signals, _ = run(m, RESMEM_PFN + 7, current=m.tasks.thread(4242))
    assert sigs(signals) == [(4242, "SIGBUS", "BUS_MCEERR_AR", VA + 0x7000, 12, True)]


def test_a_repeated_report_repeats_everything_and_moves_no_counter():
    m = mapped()
    first = run(m, current=m.tasks.thread(4242))
    m.tasks.thread(4242).handle_signals()
    second = run(m, current=m.tasks.thread(4242))
    assert first[0] == second[0] == 0
    assert first[1] == second[1]
    assert sigs(first[2]) == sigs(second[2])
    assert first[3] == second[3]
    mfo = memory_failure_of(m)
    assert mfo.num_poisoned_pages == 0
    assert mfo.node_stats == {"total": 0, "ignored": 0, "failed": 0, "delayed": 0, "recovered": 0}


def test_pending_sigbus_makes_the_repeat_undelivered():
    m = mapped()
    run(m, current=m.tasks.thread(4242))
    _, _, signals, _ = run(m, current=m.tasks.thread(4242))
    assert [s.delivered for s in signals] == [False]


def test_recovery_sysctl_zero_panics_before_anything_else():
    m = mapped(sysctl={"vm.memory_failure_recovery": 0})
    mark = len(m.klog)
    with pytest.raises(KernelPanic) as exc:
        memory_failure_of(m).memory_failure(PFN, MF_ACTION_REQUIRED, m.tasks.thread(4242))
    assert exc.value.message == f"Memory failure on page {PFN:x}"
    assert m.klog.lines(mark) == [f"Kernel panic - not syncing: Memory failure on page {PFN:x}"]
    assert m.tasks.journal == []


@pytest.mark.parametrize("kernel", ["6.12", "6.16"])
def test_before_6_19_device_memory_is_outside_kernel_control(kernel):
    m = nvgrace_machine(kernel)
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA) == 0
    ret, log, signals, trace = run(m, current=m.tasks.thread(4242))
    assert ret == -errno.ENXIO
    assert log == [f"Memory failure: {PFN:#x}: memory outside kernel control"]
    assert signals == [] and trace == []


def test_6_19_handles_a_space_registered_by_hand_and_traces_in_ras():
    m = nvgrace_machine("6.19")
    dev = m.device("gpu")
    assert m.register_pfn_address_space(dev.pfn_address_space(4)) == 0
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA) == 0
    ret, _, signals, trace = run(m, current=m.tasks.thread(4242))
    assert ret == 0 and len(signals) == 1
    assert trace[0].startswith("ras:memory_failure_event: ")


def test_hardware_failure_latch_only_for_non_simulated_reports():
    m = mapped()
    mfo = memory_failure_of(m)
    mfo.memory_failure(PFN, MF_SW_SIMULATED)
    assert not mfo.hw_memory_failure
    mfo.memory_failure(PFN, 0)
    assert mfo.hw_memory_failure


def test_config_memory_failure_n_stub_returns_0_and_does_nothing():
    m = nvgrace_machine(config_memory_failure=False)
    m.mmap(4242, "gpu", 4, 0, GiB, VA)
    ret, log, signals, trace = run(m, current=m.tasks.thread(4242))
    assert (ret, log, signals, trace) == (0, [], [], [])
