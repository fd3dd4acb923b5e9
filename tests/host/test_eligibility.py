"""The eligibility gate (reference 1.2): THP sysfs mode, MADV_HUGEPAGE / NOHUGEPAGE, prctl
PR_SET_THP_DISABLE, the mm-2026 bypass switch, and the arch's orders."""
import pytest

from hugepfn.host.mm.constants import MADV_HUGEPAGE, MADV_NOHUGEPAGE, VM_HUGEPAGE, VM_IO, VM_NOHUGEPAGE, VM_PFNMAP
from hugepfn.host.mm.mm import MM
from hugepfn.host.mm.thp import PMD_BIT, PUD_BIT, thp_vma_allowable_orders
from hugepfn.host.mm.vma import Vma
from hugepfn.host.scenario.steps import prctl

from .conftest import PID, VA, calls_named, make_machine

HUGE = [(18, "VM_FAULT_NOPAGE")]
PTE_ONLY = [(0, "VM_FAULT_NOPAGE")]


def first_touch(m, advice=None):
    assert m.mmap(PID, "D", 0, 0, 4 << 30, VA) == 0
    if advice is not None:
        assert m.madvise(PID, VA, 4 << 30, advice) == 0
    return calls_named(m.access(PID, VA))


@pytest.mark.parametrize("thp,advice,expected", [
    ("always", None, HUGE),
    ("always", MADV_HUGEPAGE, HUGE),
    ("always", MADV_NOHUGEPAGE, PTE_ONLY),
    ("madvise", None, PTE_ONLY),
    ("madvise", MADV_HUGEPAGE, HUGE),
    ("madvise", MADV_NOHUGEPAGE, PTE_ONLY),
    ("never", None, PTE_ONLY),
    ("never", MADV_HUGEPAGE, PTE_ONLY),
])
def test_thp_sysfs_gates_huge_pfnmaps_in_every_profile(profile, thp, advice, expected):
    assert first_touch(make_machine(profile, thp=thp), advice) == expected


@pytest.mark.parametrize("thp,advice,expected", [
    ("never", None, HUGE),
    ("madvise", None, HUGE),
    ("never", MADV_NOHUGEPAGE, PTE_ONLY),
])
def test_mm_2026_bypass_ignores_sysfs_but_not_nohugepage(thp, advice, expected):
    m = make_machine("7.0", thp=thp, thp_sysfs_gates_pfnmap=False)
    assert first_touch(m, advice) == expected


def test_prctl_thp_disable_blocks_huge_faults_for_the_whole_mm():
    m = make_machine()
    thread = m.tasks.thread(PID + 1)
    assert prctl(thread, 41, 1, 0) == 0            # PR_SET_THP_DISABLE from another thread
    assert prctl(thread, 42, 0, 0) == 1
    assert first_touch(m) == PTE_ONLY
    assert prctl(thread, 41, 0, 0) == 0
    assert calls_named(m.access(PID, VA + (2 << 30))) == HUGE
    assert prctl(thread, 41, 1, 1) == -22          # arg3 must be 0


def test_hardware_without_thp_gets_ptes_only():
    m = make_machine()
    m.thp_hw = False
    assert first_touch(m) == PTE_ONLY


def test_arm64_pmd_only():
    assert first_touch(make_machine(arch="arm64")) == [(9, "VM_FAULT_NOPAGE")]


def test_gate_function_directly():
    class _Machine:
        pass
    mm = MM(machine=_Machine())
    vma = Vma(mm, VA, VA + (1 << 30), 0, VM_PFNMAP | VM_IO)
    assert thp_vma_allowable_orders(vma, "always", True) == PMD_BIT | PUD_BIT
    assert thp_vma_allowable_orders(vma, "madvise", True) == 0
    vma.vm_flags |= VM_HUGEPAGE
    assert thp_vma_allowable_orders(vma, "madvise", True) == PMD_BIT | PUD_BIT
    vma.vm_flags |= VM_NOHUGEPAGE
    assert thp_vma_allowable_orders(vma, "always", False) == 0
    plain = Vma(mm, VA, VA + (1 << 30), 0, 0)       # not a special VMA: outside the model
    assert thp_vma_allowable_orders(plain, "always", True) == 0


def test_madvise_errors_and_split():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    assert m.madvise(PID, VA + 1, 4096, MADV_HUGEPAGE) == -22
    assert m.madvise(PID, VA, 4096, 99) == -22
    assert m.madvise(PID, VA + (4 << 30) - 4096, 8192, MADV_HUGEPAGE) == -12    # runs past the VMA
    mm = m.tasks.process(PID).mm
    assert [(v.vm_start - VA, v.vm_end - VA, bool(v.vm_flags & VM_HUGEPAGE)) for v in mm] == [
        (0, (4 << 30) - 4096, False), ((4 << 30) - 4096, 4 << 30, True)]
