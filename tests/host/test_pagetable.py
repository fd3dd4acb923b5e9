"""The sparse page table: entries per level, lookups, and exact huge-leaf zap semantics (docs/kernel-reference.md: zaps)."""
from hugepfn.host.mm import (PMD_SIZE, PUD_SIZE, AddressSpace, Leaf, MM, PageTable, Vma, VmFault, Zapped,
                             fault_name, parse_fault_name)
from hugepfn.host.mm.constants import VM_IO, VM_PFNMAP, VM_SHARED

BASE = 0x7f0000000000


def test_lookup_per_level():
    pt = PageTable()
    pt.set_pud(BASE, 0x3800000)
    pt.set_pmd(BASE + PUD_SIZE + PMD_SIZE, 0x3840200)
    pt.set_pte(BASE + 2 * PUD_SIZE + 0x3000, 0x4000003)
    assert pt.lookup(BASE + 0x123456) == Leaf("pud", BASE, 0x3800000)
    assert pt.pfn_at(BASE + 0x123456) == 0x3800123
    assert pt.lookup(BASE + PUD_SIZE + PMD_SIZE + 5) == Leaf("pmd", BASE + PUD_SIZE + PMD_SIZE, 0x3840200)
    assert pt.lookup(BASE + 2 * PUD_SIZE + 0x3fff) == Leaf("pte", BASE + 2 * PUD_SIZE + 0x3000, 0x4000003)
    assert pt.lookup(BASE + 2 * PUD_SIZE + 0x4000) is None
    assert pt.lookup(BASE + PUD_SIZE) is None
    assert pt.counts() == (1, 1, 1)
    assert pt.slot_state(BASE + PUD_SIZE, "pud") == "table"
    assert pt.slot_state(BASE + 2 * PUD_SIZE, "pmd") == "table"
    assert pt.slot_state(BASE + PUD_SIZE, "pmd") == "none"


def test_one_tib_of_pud_leaves_is_1024_entries():
    pt = PageTable()
    for i in range(1024):
        pt.set_pud(BASE + i * PUD_SIZE, 0x3800000 + (i << 18))
    assert pt.counts() == (1024, 0, 0)
    assert len(pt.pud_leaves) == 1024 and not pt.pmd_tables


def test_partial_zap_of_huge_leaves_clears_them_whole():
    pt = PageTable()
    pt.set_pud(BASE, 1 << 18)
    pt.set_pmd(BASE + PUD_SIZE, 2 << 18)
    out = pt.zap_range(BASE + 0x5000, BASE + 0x6000)
    assert out == [Zapped("pud", BASE, PUD_SIZE)]
    out = pt.zap_range(BASE + PUD_SIZE + 0x1000, BASE + PUD_SIZE + 0x2000)
    assert out == [Zapped("pmd", BASE + PUD_SIZE, PMD_SIZE)]
    assert pt.counts() == (0, 0, 0)
    # the PMD table remains (only the leaf went): the PUD slot is not empty any more
    assert pt.slot_state(BASE + PUD_SIZE, "pud") == "table"
    assert pt.slot_state(BASE, "pud") == "none"


def test_pte_zap_keeps_the_table_and_coalesces_runs():
    pt = PageTable()
    for i in (0, 1, 2, 5):
        pt.set_pte(BASE + i * 0x1000, 100 + i)
    out = pt.zap_range(BASE + 0x1000, BASE + 0x10000)
    assert out == [Zapped("pte", BASE + 0x1000, 0x2000), Zapped("pte", BASE + 0x5000, 0x1000)]
    assert pt.counts() == (0, 0, 1)
    pt.zap_range(BASE, BASE + 0x1000)
    assert pt.slot_state(BASE, "pmd") == "table" and pt.counts() == (0, 0, 0)


def test_fault_names():
    assert fault_name(0x100) == "VM_FAULT_NOPAGE"
    assert fault_name(0x800) == "VM_FAULT_FALLBACK"
    assert fault_name(0x2 | 0x800) == "VM_FAULT_SIGBUS|VM_FAULT_FALLBACK"
    assert fault_name(0) == "0"
    assert str(VmFault.VM_FAULT_HWPOISON) == "VM_FAULT_HWPOISON"
    assert parse_fault_name("VM_FAULT_NOPAGE|VM_FAULT_OOM") == 0x101


def test_mapping_tree_order_and_overlap():
    space = AddressSpace(name="vfio-dev")
    mm1, mm2 = MM(), MM()
    a = Vma(mm1, BASE, BASE + 0x4000, 10, VM_SHARED | VM_PFNMAP | VM_IO)
    b = Vma(mm2, BASE, BASE + 0x2000, 2, VM_SHARED | VM_PFNMAP | VM_IO)
    c = Vma(mm2, BASE + 0x10000, BASE + 0x12000, 10, VM_SHARED)
    for v in (a, b, c):
        space.vma_link(v)
    assert list(space) == [b, a, c]
    assert space.vmas_overlapping(3, 10) == [b, a, c]
    assert space.vmas_overlapping(4, 9) == []
    assert space.vmas_overlapping(13, 13) == [a]
    space.vma_unlink(a)
    assert space.vmas_overlapping(13, 13) == [] and len(space) == 2


def test_remap_range_uses_linear_tables_and_behaves_like_ptes():
    from hugepfn.host.mm.pagetable import LinearPtes, new_table
    pt = PageTable()
    start = BASE + 0x1000
    pt.set_pte_range(start, BASE + 3 * PMD_SIZE + 0x2000, 0x1000)
    tables = pt.pmd_tables[BASE >> 30].pte_tables
    kinds = [type(tables[(BASE >> 21) + i]).__name__ for i in range(4)]
    assert kinds == ["array", "LinearPtes", "LinearPtes", "array"]
    assert pt.counts() == (0, 0, 511 + 512 + 512 + 2)
    assert pt.lookup(BASE + PMD_SIZE + 0x5000) == Leaf("pte", BASE + PMD_SIZE + 0x5000, 0x1000 + 511 + 5)
    assert pt.lookup(start) == Leaf("pte", start, 0x1000)
    assert pt.lookup(BASE + 3 * PMD_SIZE + 0x2000) is None
    # a partial zap materialises one table; a full one empties it without materialising
    out = pt.zap_range(BASE + PMD_SIZE + 0x1000, BASE + PMD_SIZE + 0x3000)
    assert out == [Zapped("pte", BASE + PMD_SIZE + 0x1000, 0x2000)]
    assert isinstance(tables[(BASE >> 21) + 2], LinearPtes)
    out = pt.zap_range(BASE + 2 * PMD_SIZE, BASE + 3 * PMD_SIZE)
    assert out == [Zapped("pte", BASE + 2 * PMD_SIZE, PMD_SIZE)]
    assert pt.counts() == (0, 0, 511 + 510 + 2) and tables[(BASE >> 21) + 2] == new_table()
    assert [leaf.va for leaf in pt.leaves(BASE + PMD_SIZE, BASE + PMD_SIZE + 0x4000)] == [
        BASE + PMD_SIZE, BASE + PMD_SIZE + 0x3000]
