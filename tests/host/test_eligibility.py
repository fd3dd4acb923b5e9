"""The eligibility gate (thp_vma_allowable_orders): THP sysfs mode, MADV_HUGEPAGE / NOHUGEPAGE,
prctl PR_SET_THP_DISABLE (and PR_THP_DISABLE_EXCEPT_ADVISED), the sysfs bypass for pfnmaps
(vma_file_bypass_thp_tuneables) per kernel, and the arch's orders."""
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
@pytest.mark.parametrize("profile", ["6.16", "6.17", "6.18", "6.12.0"])
def test_thp_sysfs_gates_huge_pfnmaps_where_the_bypass_is_missing(profile, thp, advice, expected):
    """Debian's 6.16 .. 6.18 gate pfnmaps by the sysfs mode (crosscheck thp_modes, xc-thp-never,
    xc-thp-madvise: a PTE under "never" on 6.16.12 and 6.18.15)."""
    assert first_touch(make_machine(profile, thp=thp), advice) == expected


@pytest.mark.parametrize("thp,advice,expected", [
    ("always", None, HUGE), ("madvise", None, HUGE), ("never", None, HUGE), ("never", MADV_HUGEPAGE, HUGE),
    ("madvise", MADV_NOHUGEPAGE, PTE_ONLY), ("never", MADV_NOHUGEPAGE, PTE_ONLY),
])
@pytest.mark.parametrize("profile", ["6.12", "7.2", "7.3"])
def test_sysfs_mode_does_not_apply_to_pfnmaps_with_huge_fault(profile, thp, advice, expected):
    """vma_file_bypass_thp_tuneables: Debian's 6.12.118 (by backport), 7.2.13 and 7.3.4 map a PUD
    under "never" (crosscheck xc-thp-never); MADV_NOHUGEPAGE still blocks."""
    assert first_touch(make_machine(profile, thp=thp), advice) == expected


@pytest.mark.parametrize("thp,advice,expected", [
    ("never", None, HUGE),
    ("madvise", None, HUGE),
    ("never", MADV_NOHUGEPAGE, PTE_ONLY),
])
def test_mm_2026_bypass_ignores_sysfs_but_not_nohugepage(thp, advice, expected):
    m = make_machine("6.16", thp=thp, thp_sysfs_gates_pfnmap=False)
    assert first_touch(m, advice) == expected


def test_prctl_thp_disable_blocks_huge_faults_for_the_whole_mm():
    m = make_machine()
    thread = m.tasks.thread(PID + 1)
    assert prctl(thread, 41, 1, 0) == 0            # PR_SET_THP_DISABLE from another thread
    assert prctl(thread, 42, 0, 0) == 1
    assert first_touch(m) == PTE_ONLY
    assert prctl(thread, 41, 0, 0) == 0
    assert calls_named(m.access(PID, VA + (2 << 30))) == HUGE
    assert prctl(thread, 41, 1, 1) == -22          # arg3: only PR_THP_DISABLE_EXCEPT_ADVISED (2)


@pytest.mark.parametrize("profile,accepted", [("6.16", False), ("6.18", True), ("7.3", True)])
def test_prctl_thp_disable_except_advised(profile, accepted):
    """PR_SET_THP_DISABLE(1, PR_THP_DISABLE_EXCEPT_ADVISED): MADV_HUGEPAGE VMAs keep huge faults,
    PR_GET_THP_DISABLE reads 3 (crosscheck xc-prctl-thp-except-advised: 7.3.4 takes it, 6.16.12
    refuses it)."""
    m = make_machine(profile)
    thread = m.tasks.thread(PID)
    assert prctl(thread, 41, 1, 2) == (0 if accepted else -22)
    if not accepted:
        return
    assert prctl(thread, 42, 0, 0) == 3
    assert m.mmap(PID, "D", 0, 0, 2 << 30, VA) == 0
    assert m.madvise(PID, VA + (1 << 30), 1 << 30, MADV_HUGEPAGE) == 0
    assert calls_named(m.access(PID, VA)) == PTE_ONLY
    assert calls_named(m.access(PID, VA + (1 << 30))) == HUGE


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
