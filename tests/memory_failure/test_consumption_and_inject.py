"""Hardware consumption (machine check from the accessing thread, per arch), the consumption-loop
guard, and the injection interfaces (docs/kernel-reference.md: memory_failure callers, injection interfaces)."""
from __future__ import annotations

import errno

import pytest

from hugepfn.host.memory_failure import (corrupt_pfn, hard_offline_page, madvise_hwpoison, memory_failure_of,
                                         soft_offline_page, unpoison_pfn)

from .conftest import GiB, USEMEM_PFN, VA, nvgrace_machine, sigs

PFN = USEMEM_PFN + 0x123
ADDR = VA + 0x123456
RECOVERED = f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Recovered"


def consuming(kernel="7.0", arch="x86_64", policy="upstream", **kw):
    m = nvgrace_machine(kernel, policy=policy, arch=arch, **kw)
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA) == 0
    memory_failure_of(m).hardware.poison(PFN)
    return m


def test_x86_consumption_runs_memory_failure_as_the_accessing_thread():
    m = consuming()
    mark = len(m.klog)
    res = m.access(4243, ADDR)
    assert res.consumed and res.leaf.level == "pud" and res.ret == 0x100
    assert sigs(res.signals) == [(4243, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True)]
    assert m.klog.lines(mark) == [
        "nvgrace_gpu_vfio_pci 0000:09:01.0: nvgrace_gpu_vfio_pci_huge_fault order = 18 pfn 0x4000000: 0x100",
        f"mce: Uncorrected hardware memory error in user-access at {(PFN << 12) | 0x456:x}",
        f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4243 due to hardware memory corruption",
        RECOVERED]
    out = memory_failure_of(m).outcomes[-1]
    assert out.flags & 0x2 and out.current is m.tasks.thread(4243)


def test_arm64_consumption_of_a_registered_pfn_is_the_same_ar_without_the_mce_line():
    m = consuming(arch="arm64")
    mark = len(m.klog)
    res = m.access(4242, ADDR)
    assert res.leaf.level == "pmd"
    assert sigs(res.signals) == [(4242, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True)]
    assert m.klog.lines(mark)[1:] == [
        f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4242 due to hardware memory corruption", RECOVERED]


def test_unregistered_pfn_consumption_x86_not_recovered_plain_sigbus():
    m = consuming()
    dev = m.device("gpu")
    dev.close_device()                                    # unregisters usemem/resmem
    mark = len(m.klog)
    res = m.access(4242, ADDR)
    assert [(s.tid, s.signo, s.code, s.addr, s.forced) for s in res.signals] == [(4242, "SIGBUS", None, None, True)]
    assert m.klog.lines(mark)[1:] == [
        f"mce: Uncorrected hardware memory error in user-access at {(PFN << 12) | 0x456:x}",
        f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Ignored",
        "mce: Memory error not recovered"]


def test_unregistered_pfn_consumption_arm64_logs_sending_sigbus():
    m = consuming(arch="arm64")
    m.device("gpu").close_device()
    mark = len(m.klog)
    res = m.access(4242, ADDR)
    assert [(s.signo, s.code) for s in res.signals] == [("SIGBUS", None)]
    assert m.klog.lines(mark)[1:] == [
        f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Ignored",
        f"{PFN:#x}: Sending SIGBUS to qemu:4242 due to hardware memory corruption"]


def test_before_6_19_consumption_is_not_recovered():
    m = consuming("6.16")
    mark = len(m.klog)
    res = m.access(4242, ADDR)
    assert [(s.signo, s.code) for s in res.signals] == [("SIGBUS", None)]
    assert m.klog.lines(mark)[-2:] == [f"Memory failure: {PFN:#x}: memory outside kernel control",
                                       "mce: Memory error not recovered"]


def test_upstream_reconsumes_on_every_access_and_the_guard_reports_at_the_threshold():
    m = consuming()
    mfo = memory_failure_of(m)
    seen = []
    mfo.guard.callbacks.append(seen.append)
    mfo.guard.threshold = 3
    for i in range(7):
        m.tasks.thread(4242).handle_signals()
        res = m.access(4242, ADDR)
        assert res.consumed and len(res.signals) == 1
    assert mfo.guard.count(4242, PFN) == 7
    assert [(e.pid, e.tid, e.pfn, e.count, e.how) for e in seen] == [(4242, 4242, PFN, 3, "mce"),
                                                                     (4242, 4242, PFN, 6, "mce")]
    assert mfo.guard.events == seen


def test_hard_offline_consumption_happens_once_then_faults_count_for_the_guard():
    m = consuming(policy="hard-offline")
    mfo = memory_failure_of(m)
    mfo.guard.threshold = 2
    assert m.access(4242, ADDR).consumed
    res = m.access(4242, ADDR)
    assert not res.consumed and res.calls[-1] == (0, 0x10)
    assert [(e.count, e.how) for e in mfo.guard.events] == [(2, "fault")]
    assert mfo.hardware.consumptions == 1


def test_guard_threshold_must_be_positive():
    m = consuming()
    with pytest.raises(ValueError):
        memory_failure_of(m).guard.threshold = 0


def test_hard_offline_page_writer_is_current():
    m = consuming()
    mfo = memory_failure_of(m)
    mark = len(m.klog)
    text = f"{PFN << 12:#x}\n"
    assert hard_offline_page(mfo, text, m.tasks.thread(4243)) == len(text)
    assert sigs(m.tasks.journal) == [(4243, "SIGBUS", "BUS_MCEERR_AR", VA + 0x123000, 12, True)]
    assert m.klog.lines(mark) == [
        f"Memory failure: {PFN:#x}: Sending SIGBUS to qemu:4243 due to hardware memory corruption", RECOVERED]
    assert mfo.outcomes[-1].flags == 0x20 and not mfo.hw_memory_failure


@pytest.mark.parametrize("text,expected", [("zz", -errno.EINVAL), ("", -errno.EINVAL), ("-1", -errno.EINVAL),
                                           ("0x", -errno.EINVAL)])
def test_hard_offline_page_bad_numbers(text, expected):
    m = consuming()
    assert hard_offline_page(memory_failure_of(m), text, m.tasks.thread(4242)) == expected
    assert m.tasks.journal == []


def test_hard_offline_page_parses_like_kstrtoull_base_0():
    m = consuming()
    mfo = memory_failure_of(m)
    for text in (str(PFN << 12), f"0{(PFN << 12):o}", f"{PFN << 12:#X}\n"):
        m.tasks.thread(4242).handle_signals()
        assert hard_offline_page(mfo, text, m.tasks.thread(4242)) == len(text)
        assert mfo.outcomes[-1].pfn == PFN


def test_hard_offline_page_results():
    m = consuming()
    mfo = memory_failure_of(m)
    assert hard_offline_page(mfo, "0x1000", m.tasks.thread(4242), cap_sys_admin=False) == -errno.EPERM
    assert hard_offline_page(mfo, "0x9000000000", m.tasks.thread(4242)) == -errno.EBUSY   # unregistered pfn
    old = consuming("6.16")
    assert hard_offline_page(memory_failure_of(old), f"{PFN << 12:#x}", old.tasks.thread(4242)) == -errno.ENXIO


def test_struct_page_injectors_refuse_device_memory():
    m = consuming()
    mfo = memory_failure_of(m)
    assert corrupt_pfn(mfo, PFN) == -errno.ENXIO
    assert corrupt_pfn(mfo, PFN, cap_sys_admin=False) == -errno.EPERM
    assert unpoison_pfn(mfo, PFN) == -errno.EIO
    assert unpoison_pfn(mfo, PFN, cap_sys_admin=False) == -errno.EPERM
    assert madvise_hwpoison(mfo, m.tasks.thread(4242), VA, 0x1000) == -errno.EFAULT
    assert madvise_hwpoison(mfo, m.tasks.thread(4242), VA + 1, 0x1000) == -errno.EINVAL
    assert madvise_hwpoison(mfo, m.tasks.thread(4242), VA, 0x1000, cap_sys_admin=False) == -errno.EPERM
    assert soft_offline_page(mfo, f"{PFN << 12:#x}") == -errno.ENXIO
    assert soft_offline_page(mfo, "nope") == -errno.EINVAL
    assert soft_offline_page(mfo, "0x1000", cap_sys_admin=False) == -errno.EPERM
    assert m.tasks.journal == [] and mfo.outcomes == []
