"""__handle_mm_fault (docs/kernel-reference.md: fault cascade): PUD -> PMD -> PTE, attempts only on empty slots, FALLBACK
continues and anything else ends the fault; the PMD table is allocated once the cascade passes
the PUD level; an existing PTE table blocks huge attempts; arm64 never calls the driver for a PUD."""
from hugepfn.host.mm.constants import MADV_HUGEPAGE, MADV_NOHUGEPAGE, PMD_SIZE, PUD_SIZE
from hugepfn.host.mm.pagetable import Leaf

from .conftest import PID, VA, calls_named, dbg, make_machine

MEM_OFF, MEM_ON = 0x0004, 0x0006


def test_first_touch_cascade_on_a_page_aligned_va(profile):
    m = make_machine(profile)
    va = VA + 0x1000                    # only 4 KiB aligned: both huge attempts fall back
    assert m.mmap(PID, "D", 0, 0, 16 << 20, va) == 0
    r = m.access(PID, va + 0x1234)
    # the first pass under the per-VMA lock reaches ->fault and is retried under mmap_lock:
    # the PUD slot holds a PMD table by then, the PMD slot is still empty (crosscheck
    # xc-cascade-pte: the same four calls on 6.12.118, 6.16.12, 7.2.13 and 7.3.4)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"),
                              (0, "VM_FAULT_NOPAGE")]
    assert r.ret_name == "VM_FAULT_NOPAGE" and r.signals == []
    assert r.leaf == Leaf("pte", va + 0x1000, 0x3800001)


def test_non_fallback_result_stops_the_cascade(profile):
    m = make_machine(profile)
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    r = m.access(PID, VA)
    assert calls_named(r) == [(18, "VM_FAULT_NOPAGE")]
    assert r.leaf == Leaf("pud", VA, 0x3800000)
    m.device("D").config_write(4, 2, MEM_OFF)
    r = m.access(PID, VA + PUD_SIZE)
    assert calls_named(r) == [(18, "VM_FAULT_SIGBUS")] and r.leaf is None


def test_mapped_address_takes_no_fault_and_no_driver_call():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.access(PID, VA)
    r = m.access(PID + 1, VA + 0x3ffff000, write=True)
    assert (r.ret, r.calls, r.leaf) == (0, [], Leaf("pud", VA, 0x3800000))
    assert m.summary() == {str(PID): {"pud": 1, "pmd": 0, "pte": 0, "faults": 1}}


def test_pud_attempt_only_while_the_pud_slot_is_empty():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.madvise(PID, VA, PMD_SIZE, MADV_NOHUGEPAGE)       # first 2 MiB: PTEs only
    r = m.access(PID, VA)
    assert calls_named(r) == [(0, "VM_FAULT_NOPAGE")]
    # the PMD table of that GiB now exists: no PUD attempt anywhere in it, PMD attempts still
    r = m.access(PID, VA + 5 * PMD_SIZE)
    assert calls_named(r) == [(9, "VM_FAULT_NOPAGE")]
    assert r.leaf == Leaf("pmd", VA + 5 * PMD_SIZE, 0x3800000 + 5 * 512)
    # the next GiB is untouched: PUD
    assert calls_named(m.access(PID, VA + PUD_SIZE)) == [(18, "VM_FAULT_NOPAGE")]


def test_pte_table_blocks_huge_attempts_even_after_its_ptes_are_zapped():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.madvise(PID, VA, PUD_SIZE, MADV_NOHUGEPAGE)
    assert calls_named(m.access(PID, VA + 0x3000)) == [(0, "VM_FAULT_NOPAGE")]
    assert m.madvise(PID, VA, PUD_SIZE, MADV_HUGEPAGE) == 0
    m.device("D").zap(0, 4 << 30)
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.counts() == (0, 0, 0) and pt.slot_state(VA, "pmd") == "table"
    r = m.access(PID, VA + 0x7000)
    assert calls_named(r) == [(0, "VM_FAULT_NOPAGE")] and r.leaf.level == "pte"
    # the neighbouring 2 MiB has no PTE table: PMD again (no PUD: the PMD table exists)
    assert calls_named(m.access(PID, VA + PMD_SIZE)) == [(9, "VM_FAULT_NOPAGE")]


def test_zapped_huge_leaf_empties_the_slot_and_huge_comes_back():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.access(PID, VA)
    m.device("D").zap(0x1000, 0x1000)
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.slot_state(VA, "pud") == "none"
    assert calls_named(m.access(PID, VA + 0x1000)) == [(18, "VM_FAULT_NOPAGE")]


def test_pud_fallback_allocates_the_pmd_table_even_if_the_fault_then_fails():
    """The ordering caveat: once the cascade passed the PUD level, that GiB has a PMD table."""
    m = make_machine()
    va = VA + PMD_SIZE          # 2 MiB aligned, not 1 GiB: PUD falls back without a state check
    m.mmap(PID, "D", 0, 0, 2 << 30, va)
    dev = m.device("D")
    dev.config_write(4, 2, MEM_OFF)
    r = m.access(PID, va)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_SIGBUS")]
    assert [s.to_json() for s in r.signals] == [{"tid": PID, "signo": "SIGBUS", "code": "BUS_ADRERR",
                                                 "addr": hex(va), "delivered": True}]
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.slot_state(va, "pud") == "table" and pt.slot_state(va, "pmd") == "none"


def test_sigbus_at_the_pud_level_allocates_nothing():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    dev = m.device("D")
    dev.config_write(4, 2, MEM_OFF)
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_SIGBUS")]
    assert m.tasks.process(PID).mm.pgtable.slot_state(VA, "pud") == "none"
    dev.config_write(4, 2, MEM_ON)
    m.tasks.thread(PID).handle_signals()
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_NOPAGE")]


def test_arm64_never_calls_the_driver_for_a_pud():
    m = make_machine(arch="arm64")
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    r = m.access(PID, VA + 0x123456)
    assert calls_named(r) == [(9, "VM_FAULT_NOPAGE")]
    assert r.leaf == Leaf("pmd", VA, 0x3800000)
    assert m.klog.lines() == [dbg(9, 0, 0x100)]


def test_access_outside_any_vma_is_sigsegv_without_a_fault():
    m = make_machine()
    r = m.access(PID, VA)
    assert r.ret_name == "VM_FAULT_SIGSEGV" and r.calls == []
    assert r.signals[0].signo == "SIGSEGV" and r.signals[0].addr == VA
    assert m.summary()[str(PID)]["faults"] == 0


def test_fault_counts_and_summary():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.mmap(PID, "D", 0, 0, 4 << 20, VA + (8 << 30) + 0x1000)
    for a in (VA, VA + PUD_SIZE, VA + (8 << 30) + 0x1000, VA + (8 << 30) + 0x2000):
        m.access(PID, a)
    assert m.summary() == {str(PID): {"pud": 2, "pmd": 0, "pte": 2, "faults": 4}}
