"""vfio_pci_mmap_huge_fault (docs/kernel-reference.md: vfio-pci huge_fault, debug lines debug lines),
per kernel profile: results, mappings, memory_lock use and the exact dynamic-debug line."""
import pytest

from hugepfn.host.drivers.pci import PCI_D3hot
from hugepfn.host.mm.constants import PMD_SIZE, PUD_SIZE
from hugepfn.host.mm.fault import VmFaultCtx
from hugepfn.host.mm.pagetable import Leaf

from .conftest import PID, PREFIX, VA, calls_named, dbg, make_machine

NOPAGE, FALLBACK, SIGBUS = 0x100, 0x800, 0x2


def setup(profile="7.3", arch="x86_64", va=VA, length=4 << 30, offset=0, **kw):
    m = make_machine(profile, arch, **kw)
    assert m.mmap(PID, "D", 0, offset, length, va) == 0
    dev = m.device("D")
    vma = m.find_vma(PID, va)
    return m, dev, vma


def call(dev, vma, addr, order):
    return dev.huge_fault(VmFaultCtx(vma, addr), order)


@pytest.mark.parametrize("order", [9, 18])
def test_row1_misaligned_huge_falls_back_without_lock_or_state_check(profile, order):
    m, dev, vma = setup(profile, va=VA + 0x1000, length=2 << 30)
    dev.config_write(4, 2, 0x0004)              # memory off does not matter here
    dev.pm_runtime_engaged = True
    before = dev.memory_lock.read_acquisitions
    assert call(dev, vma, VA + 0x1000, order) == FALLBACK
    assert dev.memory_lock.read_acquisitions == before
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 0)


@pytest.mark.parametrize("order", [0, 9, 18])
def test_row2_runtime_pm_engaged_is_sigbus_on_the_aligned_path(profile, order):
    m, dev, vma = setup(profile)
    dev.pm_runtime_engaged = True
    before = dev.memory_lock.read_acquisitions
    assert call(dev, vma, VA, order) == SIGBUS
    assert dev.memory_lock.read_acquisitions == before + 1
    assert m.klog.lines()[-1] == dbg(order, 0, SIGBUS)


@pytest.mark.parametrize("order", [0, 9, 18])
def test_row3_memory_disabled_or_d3hot_is_sigbus(profile, order):
    m, dev, vma = setup(profile)
    dev.pdev.command = 0x0004
    assert call(dev, vma, VA, order) == SIGBUS
    dev.pdev.command = 0x0006
    dev.pdev.current_state = PCI_D3hot
    assert call(dev, vma, VA, order) == SIGBUS
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 0)


def test_virtual_function_ignores_command_memory():
    m, dev, vma = setup()
    dev.pdev.is_virtfn = True
    dev.pdev.command = 0
    assert dev.memory_enabled()
    assert call(dev, vma, VA, 0) == NOPAGE


def test_row4_order0_installs_one_pte_and_keeps_an_existing_one(profile):
    m, dev, vma = setup(profile)
    assert call(dev, vma, VA + 0x5678, 0) == NOPAGE
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.lookup(VA + 0x5000) == Leaf("pte", VA + 0x5000, 0x3800005)
    pt.set_pte(VA + 0x6000, 0x1234)
    assert call(dev, vma, VA + 0x6000, 0) == NOPAGE
    assert pt.lookup(VA + 0x6000).pfn == 0x1234
    assert m.klog.lines() == [dbg(0, 5, NOPAGE), dbg(0, 6, NOPAGE)]


def test_row5_pmd_leaf_and_row6_pud_leaf():
    m, dev, vma = setup()
    assert call(dev, vma, VA + PUD_SIZE + PMD_SIZE + 0x3000, 9) == NOPAGE
    assert call(dev, vma, VA + 2 * PUD_SIZE + 0x3000, 18) == NOPAGE
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.lookup(VA + PUD_SIZE + PMD_SIZE) == Leaf("pmd", VA + PUD_SIZE + PMD_SIZE, 0x3840200)
    assert pt.lookup(VA + 2 * PUD_SIZE) == Leaf("pud", VA + 2 * PUD_SIZE, 0x3880000)
    assert m.klog.lines() == [dbg(9, 0x40200, NOPAGE), dbg(18, 0x80000, NOPAGE)]
    # slot no longer empty: unchanged, NOPAGE
    assert call(dev, vma, VA + 2 * PUD_SIZE, 18) == NOPAGE
    assert pt.counts() == (1, 1, 0)


def test_row7_order_the_arch_cannot_map_falls_back():
    m, dev, vma = setup(arch="arm64")
    assert call(dev, vma, VA, 18) == FALLBACK
    assert dev.memory_lock.read_acquisitions == 1       # aligned path: lock taken, then FALLBACK
    assert m.klog.lines() == [dbg(18, 0, FALLBACK)]


def test_debug_line_example_from_the_reference(profile):
    """x86-64 wording of the example, on arm64 so no PUD is tried: a PMD installed at the second
    2 MiB of the VMA prints page offset 0x200."""
    m, dev, vma = setup(profile, arch="arm64", length=PUD_SIZE)
    r = m.access(PID, VA + PMD_SIZE)
    assert calls_named(r) == [(9, "VM_FAULT_NOPAGE")]
    assert m.klog.lines() == [PREFIX + "vfio_pci_mmap_huge_fault(,order = 9) BAR 0 page offset 0x200: 0x100"]


@pytest.mark.parametrize("profile,expected_calls,level,log", [
    # v6.12 as released: the PMD attempt is made twice, in the per-VMA-lock pass and in its retry
    ("6.12.0", [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (0, "VM_FAULT_NOPAGE")],
     "pte", [dbg(18, 0x40123, FALLBACK), dbg(9, 0x40123, FALLBACK), dbg(9, 0x40123, FALLBACK),
             dbg(0, 0x40123, NOPAGE)]),
    # Debian's 6.12 carries the 6.15 rule (crosscheck cascade_alignment on 6.12.118)
    ("6.12", [(18, "VM_FAULT_NOPAGE")], "pud", [dbg(18, 0x40000, NOPAGE)]),
    ("6.16", [(18, "VM_FAULT_NOPAGE")], "pud", [dbg(18, 0x40000, NOPAGE)]),
    ("6.19", [(18, "VM_FAULT_NOPAGE")], "pud", [dbg(18, 0x40000, NOPAGE)]),
    ("7.3", [(18, "VM_FAULT_NOPAGE")], "pud", [dbg(18, 0x40000, NOPAGE)]),
])
def test_alignment_rule_changed_in_6_15(profile, expected_calls, level, log):
    """v6.12.0: the faulting page itself must be order aligned; 6.15-rc6+ (and 6.12 stable):
    align the address down."""
    m, dev, vma = setup(profile)
    r = m.access(PID, VA + PUD_SIZE + 0x123456)
    assert calls_named(r) == expected_calls and r.leaf.level == level
    assert m.klog.lines() == log


def test_6_12_maps_huge_when_the_first_touch_hits_the_first_page():
    m, dev, vma = setup("6.12.0")
    r = m.access(PID, VA + PUD_SIZE)
    assert calls_named(r) == [(18, "VM_FAULT_NOPAGE")]
    assert m.klog.lines() == [dbg(18, 0x40000, NOPAGE)]
    m2, _, _ = setup("6.12.0")
    m2.madvise(PID, VA, PUD_SIZE, 15)           # no PUD in the first GiB
    m2.madvise(PID, VA, PUD_SIZE, 14)
    r = m2.access(PID, VA + 3 * PMD_SIZE)       # exact first page of a 2 MiB block: PUD falls back
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_NOPAGE")]


@pytest.mark.parametrize("profile", ["6.12", "6.16", "6.19", "7.3"])
def test_pfn_not_order_aligned_falls_back(profile):
    m, dev, vma = setup(profile, bar_phys=0x3800001000 - 0x1000 + 0x100000)   # 1 MiB aligned BAR
    r = m.access(PID, VA + 0x5000)
    # the PMD attempt again in the retry under mmap_lock (crosscheck xc-offset-misaligned)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"),
                              (0, "VM_FAULT_NOPAGE")]
    assert r.leaf == Leaf("pte", VA + 0x5000, 0x3800105)


def test_block_past_the_vma_end_falls_back():
    m, dev, vma = setup(length=PUD_SIZE + PMD_SIZE)
    r = m.access(PID, VA + PUD_SIZE + 0x1000)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_NOPAGE")]
    # the last 2 MiB block fits exactly; in a VMA ending 4 KiB earlier it does not
    m2, _, _ = setup(length=PUD_SIZE + PMD_SIZE - 0x1000)
    r = m2.access(PID, VA + PUD_SIZE + 0x1000)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"), (9, "VM_FAULT_FALLBACK"),
                              (0, "VM_FAULT_NOPAGE")]
    assert m2.klog.lines()[1] == dbg(9, 0x40000, FALLBACK)


def test_region_offset_is_part_of_the_pfn():
    m, dev, vma = setup(offset=PUD_SIZE, length=PUD_SIZE)
    r = m.access(PID, VA + 0x10)
    assert r.leaf == Leaf("pud", VA, 0x3840000)
    assert m.klog.lines() == [dbg(18, 0, NOPAGE)]


def test_row4_page_table_allocation_failure_is_oom_without_a_signal():
    m, dev, vma = setup()
    pt = m.tasks.process(PID).mm.pgtable
    m.madvise(PID, VA, PMD_SIZE, 15)                     # PTE-only 2 MiB at VA
    vma = m.find_vma(PID, VA)
    pt.pmd_alloc(VA)                                     # the PMD table exists, the PTE table not
    pt.fail_allocs = 1
    r = m.access(PID, VA + 0x1000)
    assert calls_named(r) == [(0, "VM_FAULT_OOM")] and r.signals == [] and r.leaf is None
    assert m.klog.lines() == [dbg(0, 1, 0x1)]
    assert pt.slot_state(VA, "pmd") == "none"
    assert calls_named(m.access(PID, VA + 0x1000)) == [(0, "VM_FAULT_NOPAGE")]


def test_pmd_table_allocation_failure_in_the_cascade_is_oom_before_any_pmd_call():
    m, dev, vma = setup(va=VA + PMD_SIZE, length=PUD_SIZE)      # PUD attempt falls back
    pt = m.tasks.process(PID).mm.pgtable
    pt.fail_allocs = 1
    r = m.access(PID, VA + PMD_SIZE)
    assert calls_named(r) == [(18, "VM_FAULT_FALLBACK")] and r.ret_name == "VM_FAULT_OOM"
    assert pt.slot_state(VA, "pud") == "none" and pt.fail_allocs == 0
