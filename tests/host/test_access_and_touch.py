"""Accesses as the task sees them (docs/kernel-reference.md: fault results) and the range-touch operation: fault results
become signals, mapped leaves are skipped arithmetically, and the hardware-poison hook sees
every touched poisoned page."""
from hugepfn.host.mm.constants import MADV_NOHUGEPAGE, PMD_SIZE, PUD_SIZE
from hugepfn.host.mm.pagetable import Leaf

from .conftest import PID, VA, make_machine


class FakePoison:
    """A stand-in for the memory-failure model's hook: a set of bad pfns and a record of consumptions."""

    def __init__(self, pfns):
        self.pfns = set(pfns)
        self.consumed = []

    def is_poisoned(self, pfn, offset=None):
        return pfn in self.pfns

    def first_poisoned(self, lo, hi):
        hits = [p for p in self.pfns if lo <= p < hi]
        return min(hits) if hits else None

    def consume(self, thread, vma, addr, pfn, write):
        self.consumed.append((thread.tid, addr, pfn, write))


def test_sigbus_carries_the_exact_faulting_byte_and_coalesces_while_pending():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.device("D").config_write(4, 2, 0)
    r1 = m.access(PID, VA + 0x123457)
    r2 = m.access(PID, VA + 0x200001)
    assert [s.to_json() for s in r1.signals + r2.signals] == [
        {"tid": PID, "signo": "SIGBUS", "code": "BUS_ADRERR", "addr": hex(VA + 0x123457), "delivered": True},
        {"tid": PID, "signo": "SIGBUS", "code": "BUS_ADRERR", "addr": hex(VA + 0x200001), "delivered": False}]
    assert m.tasks.thread(PID).pending["SIGBUS"].addr == VA + 0x123457


def test_write_to_a_read_only_region_is_sigsegv():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    vma = m.find_vma(PID, VA)
    vma.vm_flags &= ~0x2            # as if mapped PROT_READ
    r = m.access(PID, VA, write=True)
    assert r.ret_name == "VM_FAULT_SIGSEGV" and r.signals[0].code == 2 and r.calls == []


def test_touch_range_skips_mapped_leaves_and_faults_once_per_leaf():
    m = make_machine(bar_size=8 << 30)
    m.mmap(PID, "D", 0, 0, 8 << 30, VA)
    r = m.touch_range(PID, VA, VA + (8 << 30), stride=PMD_SIZE)
    assert (r.accesses, r.faults, r.signals, r.stopped_at) == (4096, 8, [], None)
    assert m.summary()[str(PID)] == {"pud": 8, "pmd": 0, "pte": 0, "faults": 8}
    again = m.touch_range(PID, VA + 0x1000, VA + (8 << 30), stride=PMD_SIZE)
    assert (again.accesses, again.faults) == (4096, 0)


def test_touch_range_over_mixed_levels_and_an_odd_stride():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.madvise(PID, VA, PMD_SIZE, MADV_NOHUGEPAGE)
    r = m.touch_range(PID, VA, VA + 3 * PMD_SIZE, stride=0x3000)
    expected = len(range(VA, VA + 3 * PMD_SIZE, 0x3000))
    # first 2 MiB: one PTE fault per touched page (171 pages); then two PMD faults
    assert r.accesses == expected and r.faults == len(range(0, PMD_SIZE, 0x3000)) + 2
    assert m.summary()[str(PID)]["pmd"] == 2


def test_touch_range_stops_at_the_first_signal():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.access(PID, VA)
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA + PUD_SIZE)
    m.device("D").low_power_entry()             # zaps everything and makes faults SIGBUS
    r = m.touch_range(PID, VA, VA + 2 * PUD_SIZE, stride=PMD_SIZE)
    assert r.stopped_at == VA and r.accesses == 1 and r.signals[0].code_name == "BUS_ADRERR"


def test_poison_hook_sees_touched_poisoned_pages_only():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    hook = m.hw_poison = FakePoison({0x3800201, 0x3800400})     # page 0x201 is never touched at a 2M stride
    r = m.touch_range(PID, VA, VA + PUD_SIZE, stride=PMD_SIZE)
    assert r.accesses == 512 and hook.consumed == [(PID, VA + (0x400 << 12), 0x3800400, False)]
    # a store to a poisoned line is a posted write to uncached memory: no machine check; a load is
    a = m.access(PID + 1, VA + (0x201 << 12) + 8, write=True)
    assert not a.consumed and a.leaf == Leaf("pud", VA, 0x3800000)
    a = m.access(PID + 1, VA + (0x201 << 12) + 8)
    assert a.consumed and hook.consumed[-1][:3] == (PID + 1, VA + (0x201 << 12) + 8, 0x3800201)
    assert m.access(PID, VA + 0x5000).consumed is False


def test_poison_hook_is_asked_after_a_fault_maps_the_page():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    hook = m.hw_poison = FakePoison({0x3800000})
    r = m.access(PID, VA)
    assert r.calls == [(18, 0x100)] and r.consumed and hook.consumed == [(PID, VA, 0x3800000, False)]
