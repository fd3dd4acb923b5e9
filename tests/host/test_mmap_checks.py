"""vfio_pci_core_mmap (docs/kernel-reference.md: vfio-pci mmap): the -EINVAL checks in order, what a successful mmap sets,
and that nothing is mapped at mmap time; plus munmap splitting and page-table freeing."""
import errno

import pytest

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.mm.constants import (MADV_NOHUGEPAGE, PMD_SIZE, PUD_SIZE, VM_ALLOW_ANY_UNCACHED, VM_DONTDUMP, VM_DONTEXPAND,
                                       VM_IO, VM_PFNMAP, VM_SHARED)

from .conftest import PID, VA, make_machine

EINVAL = -errno.EINVAL


def bars_machine():
    m = Machine()
    m.create_process(PID, "qemu")
    m.add_device("D", bars=[PciBar(0, 0x3800000000, 1 << 30), PciBar(1, 0x2000, 0x100, io=True),
                            PciBar(3, 0x3900000000, 0x800), PciBar(4, 0x3900000800, 0x800),
                            PciBar(5, 0x3a00000000, 0)])
    return m


@pytest.mark.parametrize("region,offset,length,shared,expected", [
    (9, 0, 4096, True, EINVAL),             # index >= VFIO_PCI_NUM_REGIONS + device regions
    (15, 0, 4096, True, EINVAL),
    (0, 0, 4096, False, EINVAL),            # not VM_SHARED
    (8, 0, 4096, True, EINVAL),             # VGA: >= ROM index
    (7, 0, 4096, True, EINVAL),             # config space
    (6, 0, 4096, True, EINVAL),             # ROM
    (1, 0, 4096, True, EINVAL),             # I/O BAR
    (2, 0, 4096, True, EINVAL),             # BAR absent
    (5, 0, 4096, True, EINVAL),             # zero-size BAR
    (4, 0, 4096, True, EINVAL),             # sub-page BAR not page aligned: cannot be padded
    (3, 0, 4096, True, 0),                  # sub-page BAR, page aligned: padded to a page
    (3, 0, 8192, True, EINVAL),             # beyond the page-aligned BAR length
    (0, 0, 1 << 30, True, 0),
    (0, 4096, 1 << 30, True, EINVAL),       # offset + length > BAR
    (0, (1 << 30) - 4096, 4096, True, 0),
    (0, 100, 4096, True, EINVAL),           # mmap offset not page aligned
])
def test_mmap_checks(region, offset, length, shared, expected):
    m = bars_machine()
    assert m.mmap(PID, "D", region, offset, length, VA, shared) == expected
    mm = m.tasks.process(PID).mm
    assert len(mm) == (1 if expected == 0 else 0)
    assert len(m.device("D").mapping) == len(mm)


def test_successful_mmap_sets_flags_ops_and_maps_nothing():
    m = make_machine()
    assert m.mmap(PID, "D", 0, PMD_SIZE, PUD_SIZE, VA) == 0
    vma = m.find_vma(PID, VA)
    dev = m.device("D")
    want = VM_SHARED | VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP | VM_ALLOW_ANY_UNCACHED
    assert vma.vm_flags & want == want
    assert vma.vm_ops is dev.vm_ops and vma.vm_ops.name == "vfio_pci_mmap_ops"
    assert vma.vm_private_data is dev and vma.vm_file is dev.file
    assert vma.vm_pgoff == (0 << 28) + (PMD_SIZE >> 12)
    assert list(dev.mapping) == [vma]
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 0)


def test_syscall_argument_errors():
    m = make_machine()
    assert m.mmap(PID, "D", 0, 0, 0, VA) == EINVAL
    assert m.mmap(PID, "D", 0, 0, 4096, VA + 1) == EINVAL
    assert m.mmap(PID, "D", 0, 0, 4096, 1 << 47) == -errno.ENOMEM
    assert m.munmap(PID, VA + 1, 4096) == EINVAL


def test_map_fixed_replaces_and_munmap_splits_zaps_and_frees_tables():
    m = make_machine("6.12")        # split_huge_leaf clears the PUD at the new VMA boundaries
    m.mmap(PID, "D", 0, 0, 2 * PUD_SIZE, VA)
    m.access(PID, VA)
    m.access(PID, VA + PUD_SIZE)
    mm = m.tasks.process(PID).mm
    # MAP_FIXED over the second GiB: the old piece is unmapped (its PUD zapped) first
    assert m.mmap(PID, "D", 0, 0, PUD_SIZE, VA + PUD_SIZE) == 0
    assert [(v.vm_start - VA, v.vm_pgoff) for v in mm] == [(0, 0), (PUD_SIZE, 0)]
    assert mm.pgtable.counts() == (1, 0, 0)
    # munmap a 4 KiB hole in the middle of the first GiB: its PUD goes, the VMA splits in two
    assert m.munmap(PID, VA + PMD_SIZE, 4096) == 0
    assert [(v.vm_start - VA, v.vm_end - VA, v.vm_pgoff) for v in mm] == [
        (0, PMD_SIZE, 0), (PMD_SIZE + 4096, PUD_SIZE, (PMD_SIZE + 4096) >> 12), (PUD_SIZE, 2 * PUD_SIZE, 0)]
    assert mm.pgtable.counts() == (0, 0, 0)
    assert len(m.device("D").mapping) == 3
    # everything unmapped: the page tables of the range are freed
    m.access(PID, VA + PMD_SIZE + 0x2000)
    assert m.munmap(PID, VA, 2 * PUD_SIZE) == 0
    assert len(mm) == 0 and mm.pgtable.nr_tables() == (0, 0)
    assert len(m.device("D").mapping) == 0


def test_7_3_oopses_when_a_vma_boundary_inside_a_pud_is_not_2m_aligned():
    """vma_adjust_trans_huge of 7.2/7.3 looks for a PMD at a boundary that is not 2 MiB aligned;
    inside a PUD leaf mm_find_pmd reads the leaf as a PMD table and __split_huge_pmd faults on
    it (crosscheck xc-munmap-unaligned-in-pud: an Oops in _raw_spin_lock on 7.2.13, 7.3.4, 6.16.12)."""
    from hugepfn.host.oops import KernelOops

    m = make_machine("7.3")
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.access(PID, VA)
    with pytest.raises(KernelOops) as crash:
        m.munmap(PID, VA + PMD_SIZE + 4096, 4096)
    assert crash.value.first_line == "BUG: unable to handle page fault for address: <ptr>"
    assert crash.value.trace == ("_raw_spin_lock", "__split_huge_pmd", "vma_adjust_trans_huge")
    # a boundary 2 MiB aligned keeps the PUD across it: no split, no crash
    m2 = make_machine("7.3")
    m2.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m2.access(PID, VA)
    assert m2.madvise(PID, VA + PMD_SIZE, PMD_SIZE, MADV_NOHUGEPAGE) == 0
    assert m2.tasks.process(PID).mm.pgtable.counts() == (1, 0, 0)
