"""The poison policies: upstream (nothing unmapped), hard-offline (zap + FALLBACK refault,
VM_FAULT_HWPOISON on the page), split (in-place split, no refault for clean pages), repair and
collapse (docs/kernel-reference.md: poison policies, zaps the seeds)."""
from __future__ import annotations

from hugepfn.host.memory_failure import MF_ACTION_REQUIRED, collapse, memory_failure_of, repair_pfn
from hugepfn.host.mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_HWPOISON, VM_FAULT_NOPAGE

from .conftest import GiB, MiB, USEMEM_PFN, VA, nvgrace_machine, sigs

PFN = USEMEM_PFN + 0x40123          # 1 GiB + 0x123 pages into usemem
POISON_VA = VA + GiB + 0x123000     # second GiB, first 2 MiB block


def populated(policy: str):
    m = nvgrace_machine(policy=policy)
    assert m.mmap(4242, "gpu", 4, 0, 2 * GiB, VA) == 0
    m.access(4242, VA)
    m.access(4242, VA + GiB)
    assert m.tasks.process(4242).mm.pgtable.counts() == (2, 0, 0)
    return m


def report(m, tid=4242):
    mark = len(m.zap_journal)
    ret = memory_failure_of(m).memory_failure(PFN, MF_ACTION_REQUIRED, m.tasks.thread(tid))
    return ret, [(z.zapped.level, z.zapped.va, z.zapped.length) for z in m.zap_journal[mark:]]


def counts(m):
    return m.tasks.process(4242).mm.pgtable.counts()


def test_upstream_keeps_every_leaf_and_poison_stays_reachable():
    m = populated("upstream")
    assert report(m) == (0, [])
    assert counts(m) == (2, 0, 0)
    res = m.access(4243, POISON_VA)
    assert (res.ret, res.calls, res.leaf.level) == (0, [], "pud")
    assert memory_failure_of(m).drivers == {}


def test_hard_offline_zaps_the_covering_pud_and_refaults_around_the_poison():
    m = populated("hard-offline")
    assert report(m) == (0, [("pud", VA + GiB, GiB)])
    assert counts(m) == (1, 0, 0)
    # a clean page in another 2 MiB of the poisoned GiB: PUD FALLBACK, PMD maps
    res = m.access(4243, VA + GiB + 4 * MiB)
    assert res.calls == [(18, VM_FAULT_FALLBACK), (9, VM_FAULT_NOPAGE)]
    assert res.leaf.level == "pmd" and res.ret == VM_FAULT_NOPAGE
    # a clean page inside the poisoned 2 MiB: PTE (the PMD attempt again in the retry of the
    # per-VMA-lock pass)
    res = m.access(4243, POISON_VA + 0x1000)
    assert res.calls == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (0, VM_FAULT_NOPAGE)]
    assert res.leaf.level == "pte" and res.leaf.pfn == PFN + 1
    # the poisoned page itself: VM_FAULT_HWPOISON -> SIGBUS BUS_MCEERR_AR lsb 12
    mark = len(m.klog)
    res = m.access(4243, POISON_VA + 0x456)
    assert res.calls == [(0, VM_FAULT_HWPOISON)] and res.ret == VM_FAULT_HWPOISON and res.leaf is None
    assert sigs(res.signals) == [(4243, "SIGBUS", "BUS_MCEERR_AR", POISON_VA + 0x456, 12, True)]
    assert m.klog.lines(mark) == [
        f"nvgrace_gpu_vfio_pci 0000:09:01.0: nvgrace_gpu_vfio_pci_huge_fault order = 0 pfn {PFN:#x}: 0x10",
        f"MCE: Killing qemu:4243 due to hardware memory corruption fault at {POISON_VA + 0x456:x}"]
    # the other GiB is untouched
    assert m.access(4242, VA + 5).calls == []


def test_hard_offline_the_same_signals_as_upstream():
    up, ho = populated("upstream"), populated("hard-offline")
    for m in (up, ho):
        report(m, 4243)
    assert sigs(up.tasks.journal) == sigs(ho.tasks.journal) == [
        (4243, "SIGBUS", "BUS_MCEERR_AR", POISON_VA & ~0xFFF, 12, True)]


def test_hard_offline_refaulting_a_whole_gib_takes_511_pmd_and_511_pte_faults():
    m = populated("hard-offline")
    report(m)
    before = m.tasks.process(4242).mm.nr_faults
    out = m.touch_range(4242, VA + GiB, VA + 2 * GiB)
    assert out.stopped_at == POISON_VA & ~0xFFF         # the poisoned page raised SIGBUS
    # touch again past the hole
    out2 = m.touch_range(4242, (POISON_VA & ~0xFFF) + 0x1000, VA + 2 * GiB)
    assert out2.signals == []
    faults = m.tasks.process(4242).mm.nr_faults - before
    assert counts(m) == (1, 511, 511)
    assert faults == 0x123 + 1 + (511 - 0x123) + 511     # PTE faults before, the HWPOISON fault, PTEs after, PMDs


def test_split_unmaps_only_the_poisoned_page_and_clean_pages_take_no_fault():
    m = populated("split")
    assert report(m) == (0, [("pte", POISON_VA & ~0xFFF, 0x1000)])
    assert counts(m) == (1, 511, 511)
    before = m.tasks.process(4242).mm.nr_faults
    for addr in (VA + GiB, POISON_VA + 0x1000, POISON_VA - 0x1000, VA + 2 * GiB - 1, VA + GiB + 2 * MiB):
        res = m.access(4243, addr)
        assert (res.ret, res.calls) == (0, [])
    pt = m.tasks.process(4242).mm.pgtable
    assert pt.lookup(POISON_VA + 0x1000).pfn == PFN + 1
    assert pt.lookup(VA + GiB + 2 * MiB).level == "pmd" and pt.lookup(VA + GiB + 2 * MiB).pfn == USEMEM_PFN + 0x40200
    assert m.tasks.process(4242).mm.nr_faults == before
    res = m.access(4243, POISON_VA)
    assert res.calls == [(0, VM_FAULT_HWPOISON)]
    assert sigs(res.signals) == [(4243, "SIGBUS", "BUS_MCEERR_AR", POISON_VA, 12, True)]


def test_split_of_a_pmd_leaf_and_of_a_pte():
    m = nvgrace_machine(policy="split")
    assert m.mmap(4242, "gpu", 4, 0, 2 * GiB, VA) == 0
    assert m.madvise(4242, VA, 2 * GiB, 15) == 0            # MADV_NOHUGEPAGE ... PTE only
    m.access(4242, VA + 0x123000)
    assert counts(m) == (0, 0, 1)
    memory_failure_of(m).memory_failure(USEMEM_PFN + 0x123, 0)
    assert counts(m) == (0, 0, 0)
    m2 = nvgrace_machine(policy="split")
    assert m2.mmap(4242, "gpu", 4, 0, 2 * GiB, VA + 2 * MiB) == 0       # only 2 MiB aligned: PMDs
    m2.access(4242, VA + 2 * MiB)
    assert counts(m2) == (0, 1, 0)
    memory_failure_of(m2).memory_failure(USEMEM_PFN + 0x5, 0)
    assert counts(m2) == (0, 0, 511)


def test_recorded_poison_keeps_huge_leaves_away_after_the_tables_are_gone():
    m = populated("split")
    report(m)
    assert m.device("gpu").ioctl_reset() == 0               # zap: leaves go, tables stay
    assert m.access(4242, VA + GiB + 8 * MiB).calls == [(9, VM_FAULT_NOPAGE)]
    assert m.access(4242, POISON_VA + 0x1000).calls == [(0, VM_FAULT_NOPAGE)]
    assert m.munmap(4242, VA, 2 * GiB) == 0                 # tables freed
    assert m.mmap(4242, "gpu", 4, 0, 2 * GiB, VA) == 0
    assert m.access(4242, VA + GiB + 8 * MiB).calls == [(18, VM_FAULT_FALLBACK), (9, VM_FAULT_NOPAGE)]
    assert m.access(4242, POISON_VA + 0x1000).calls == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK),
                                                        (0, VM_FAULT_NOPAGE)]
    assert m.access(4242, VA).calls == [(18, VM_FAULT_NOPAGE)]


def test_repair_forgets_the_pfn_but_tables_keep_the_range_small_until_collapse():
    m = populated("hard-offline")
    report(m)
    m.touch_range(4242, VA + GiB, POISON_VA & ~0xFFF)
    mfo = memory_failure_of(m)
    assert repair_pfn(mfo, PFN) is True
    assert PFN not in mfo.drivers[id(m.device("gpu"))].poison
    res = m.access(4242, POISON_VA)             # the PTE table stays: order 0 only, now clean
    assert res.calls == [(0, VM_FAULT_NOPAGE)] and res.leaf.level == "pte"
    mm = m.tasks.process(4242).mm
    assert collapse(mfo, mm, VA + GiB, VA + 2 * GiB) == [("pud", VA + GiB)]
    assert counts(m) == (1, 0, 0)
    res = m.access(4242, POISON_VA)
    assert res.calls == [(18, VM_FAULT_NOPAGE)] and res.leaf.level == "pud"


def test_collapse_retracts_only_clean_blocks():
    m = populated("split")
    report(m)
    mfo = memory_failure_of(m)
    mm = m.tasks.process(4242).mm
    assert collapse(mfo, mm, VA + GiB, VA + 2 * GiB) == []       # the PUD and its 2 MiB hold poison
    assert counts(m) == (1, 511, 511)
    repair_pfn(mfo, PFN)
    assert collapse(mfo, mm, VA + GiB, VA + GiB + 2 * MiB) == [("pud", VA + GiB)]


def test_poison_on_a_vfio_pci_bar_registered_by_a_scenario_style_space():
    from hugepfn.host.drivers.pci import PciBar
    from hugepfn.host.machine import Machine
    m = Machine(kernel="7.0", policy="hard-offline")
    m.create_process(10, "q")
    dev = m.add_device("D", "vfio-pci", bars=[PciBar(0, 0x3800000000, 4 * GiB)])
    assert m.register_pfn_address_space(dev.pfn_address_space(0)) == 0
    assert m.mmap(10, "D", 0, 0, 4 * GiB, VA) == 0
    m.access(10, VA + 3 * GiB)
    mark = len(m.klog)
    assert memory_failure_of(m).memory_failure(0x3800000 + 0xC0000 + 7, 0, m.tasks.thread(10)) == 0
    assert counts_of(m, 10) == (0, 0, 0)
    res = m.access(10, VA + 3 * GiB + 7 * 0x1000)
    assert res.calls == [(18, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK),
                         (0, VM_FAULT_HWPOISON)]
    assert m.klog.lines(mark)[-5:-1] == [
        "vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 18) BAR 0 page offset 0xc0000: 0x800",
        "vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 9) BAR 0 page offset 0xc0000: 0x800",
        "vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 9) BAR 0 page offset 0xc0000: 0x800",
        "vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 0) BAR 0 page offset 0xc0007: 0x10"]


def counts_of(m, pid):
    return m.tasks.process(pid).mm.pgtable.counts()
