"""vmf_insert_pfn / _pmd / _pud (docs/kernel-reference.md: insert helpers): results, where they install, and the BUG checks."""
import pytest

from hugepfn.host.mm.constants import (PMD_SIZE, PUD_SIZE, VM_IO, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP,
                                       VM_SHARED)
from hugepfn.host.mm.fault import VmFaultCtx
from hugepfn.host.mm.insert import KernelBug, vmf_insert_pfn, vmf_insert_pfn_pmd, vmf_insert_pfn_pud
from hugepfn.host.mm.mm import MM
from hugepfn.host.mm.pagetable import Leaf
from hugepfn.host.mm.vma import Vma

VA = 0x7f0000000000
SHARED_PFNMAP = VM_SHARED | VM_PFNMAP | VM_IO | VM_MAYWRITE


def vma(flags=SHARED_PFNMAP, start=VA, length=PUD_SIZE):
    return Vma(MM(), start, start + length, 0, flags)


def test_pte_insert_outside_vma_is_sigbus_and_existing_pte_stays():
    v = vma(length=0x4000)
    assert vmf_insert_pfn(v, VA + 0x4000, 1) == 0x2
    assert vmf_insert_pfn(v, VA - 0x1000, 1) == 0x2
    assert vmf_insert_pfn(v, VA + 0x1000, 0x111) == 0x100
    assert vmf_insert_pfn(v, VA + 0x1000, 0x222) == 0x100
    assert v.vm_mm.pgtable.lookup(VA + 0x1000) == Leaf("pte", VA + 0x1000, 0x111)


def test_pmd_insert_checks_only_the_aligned_address():
    v = vma(start=VA + 0x1000, length=PMD_SIZE)       # [VA+4K, VA+2M+4K)
    # VA & PMD_MASK = VA is below vm_start: SIGBUS
    assert vmf_insert_pfn_pmd(VmFaultCtx(v, VA + 0x5000), 0x200) == 0x2
    # VA + 2M is inside the VMA although the 2 MiB does not fit: installed (callers check the fit)
    assert vmf_insert_pfn_pmd(VmFaultCtx(v, VA + PMD_SIZE), 0x400) == 0x100
    assert v.vm_mm.pgtable.lookup(VA + PMD_SIZE + 0x10000) == Leaf("pmd", VA + PMD_SIZE, 0x400)


def test_huge_insert_into_a_non_empty_slot_leaves_it():
    v = vma(length=2 * PUD_SIZE)
    pt = v.vm_mm.pgtable
    pt.set_pte(VA + 0x1000, 7)                        # PMD slot of VA holds a PTE table
    assert vmf_insert_pfn_pmd(VmFaultCtx(v, VA), 0x200) == 0x100
    assert pt.lookup(VA) is None and pt.slot_state(VA, "pmd") == "table"
    assert vmf_insert_pfn_pud(VmFaultCtx(v, VA), 0x40000) == 0x100     # PUD slot holds a PMD table
    assert pt.counts() == (0, 0, 1)
    assert vmf_insert_pfn_pud(VmFaultCtx(v, VA + PUD_SIZE + 0x123000), 0x80000) == 0x100
    assert pt.lookup(VA + PUD_SIZE + 5) == Leaf("pud", VA + PUD_SIZE, 0x80000)
    assert vmf_insert_pfn_pud(VmFaultCtx(v, VA + PUD_SIZE), 0x99999) == 0x100
    assert pt.lookup(VA + PUD_SIZE).pfn == 0x80000


@pytest.mark.parametrize("flags,why", [
    (VM_SHARED | VM_IO, "neither VM_PFNMAP nor VM_MIXEDMAP"),
    (VM_SHARED | VM_PFNMAP | VM_MIXEDMAP, "both VM_PFNMAP and VM_MIXEDMAP"),
    (VM_PFNMAP | VM_MAYWRITE, "COW"),
])
def test_bug_conditions(flags, why):
    v = vma(flags)
    with pytest.raises(KernelBug):
        vmf_insert_pfn(v, VA, 1)
    with pytest.raises(KernelBug):
        vmf_insert_pfn_pmd(VmFaultCtx(v, VA), 0)
    with pytest.raises(KernelBug):
        vmf_insert_pfn_pud(VmFaultCtx(v, VA), 0)


def test_private_read_only_pfnmap_and_mixedmap_are_allowed():
    assert vmf_insert_pfn(vma(VM_PFNMAP | VM_IO), VA, 1) == 0x100
    assert vmf_insert_pfn(vma(VM_SHARED | VM_MIXEDMAP), VA, 1) == 0x100
