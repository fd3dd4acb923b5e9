"""Zap semantics (docs/kernel-reference.md: zaps): unmap_mapping_range over the device file, huge leaves partly
covered are cleared whole with nothing installed, PTE tables stay; who zaps in vfio-pci
(COMMAND memory-disable, PM_CTRL to D3hot, reset, low-power entry) and what faults see after."""
from hugepfn.host.drivers import PciBar
from hugepfn.host.mm.constants import MADV_NOHUGEPAGE, PMD_SIZE, PUD_SIZE
from hugepfn.host.mm.pagetable import Leaf, Zapped
from hugepfn.host.mm.zap import unmap_mapping_range

from .conftest import PID, VA, calls_named, make_machine


def populated(levels=("pud", "pmd", "pte")):
    """BAR0 mapped at VA (PUD), at VA+8G+2M (PMD) and at VA+16G+4K (PTE), each touched once."""
    m = make_machine(bar_size=4 << 30)
    m.mmap(PID, "D", 0, 0, 4 << 30, VA)
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA + (8 << 30) + PMD_SIZE)
    m.mmap(PID, "D", 0, 0, 16 << 20, VA + (16 << 30) + 0x1000)
    m.access(PID, VA)
    m.access(PID, VA + (8 << 30) + PMD_SIZE)
    m.access(PID, VA + (16 << 30) + 0x1000)
    m.access(PID, VA + (16 << 30) + 0x2000)
    return m


def zaps(result):
    return [(z.vma.vm_start, z.zapped) for z in result]


def test_partial_zap_of_a_pud_clears_it_whole_and_installs_nothing():
    m = populated()
    out = m.device("D").zap(0x5000, 0x1000)        # file page 5: inside every mapping's first block
    # (file page 5 of the PTE-mapped VMA was never touched: nothing to clear there)
    assert [z.zapped for z in out] == [Zapped("pud", VA, PUD_SIZE),
                                       Zapped("pmd", VA + (8 << 30) + PMD_SIZE, PMD_SIZE)]
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.lookup(VA + 0x6000) is None and pt.slot_state(VA, "pud") == "none"
    assert pt.counts() == (0, 0, 2)           # the two PTEs at pages 1 and 2 were not in the range


def test_zap_maps_file_pages_to_each_vmas_addresses_in_tree_order():
    m = populated()
    out = m.device("D").zap(0x1000, 0x1000)       # file page 1
    assert [(z.vma.vm_start, z.zapped) for z in out] == [
        (VA, Zapped("pud", VA, PUD_SIZE)),
        (VA + (8 << 30) + PMD_SIZE, Zapped("pmd", VA + (8 << 30) + PMD_SIZE, PMD_SIZE)),
        (VA + (16 << 30) + 0x1000, Zapped("pte", VA + (16 << 30) + 0x2000, 0x1000))]
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.counts() == (0, 0, 1)
    assert pt.slot_state(VA + (16 << 30) + 0x1000, "pmd") == "table"     # PTE table stays


def test_full_coverage_and_holelen_zero_means_to_the_end():
    m = populated()
    dev = m.device("D")
    assert dev.zap(PUD_SIZE, 0) == []                     # nothing mapped beyond the first GiB of the file
    out = dev.zap(0, 0)
    assert [z.zapped for z in out] == [Zapped("pud", VA, PUD_SIZE),
                                       Zapped("pmd", VA + (8 << 30) + PMD_SIZE, PMD_SIZE),
                                       Zapped("pte", VA + (16 << 30) + 0x1000, 0x2000)]     # one PTE run
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 0)


def test_zap_intersection_starts_at_the_vma_pgoff():
    m = make_machine()
    m.mmap(PID, "D", 0, PUD_SIZE, PUD_SIZE, VA)               # file pages from 0x40000
    m.access(PID, VA)
    dev = m.device("D")
    assert dev.zap(0, PUD_SIZE) == []                         # below the VMA's pgoff
    out = unmap_mapping_range(dev.mapping, PUD_SIZE - 0x1000, 0x2000)
    assert [z.zapped for z in out] == [Zapped("pud", VA, PUD_SIZE)]


def test_zap_touches_only_this_devices_file():
    m = make_machine()
    m.add_device("E", bdf="0000:02:00.0", bars=[PciBar(0, 0x4000000000, 1 << 30)])
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.mmap(PID, "E", 0, 0, PUD_SIZE, VA + PUD_SIZE)
    m.access(PID, VA)
    m.access(PID, VA + PUD_SIZE)
    m.device("D").config_write(4, 2, 0)
    pt = m.tasks.process(PID).mm.pgtable
    assert pt.lookup(VA) is None and pt.lookup(VA + PUD_SIZE) == Leaf("pud", VA + PUD_SIZE, 0x4000000)


def test_command_memory_disable_zaps_all_bars_and_faults_sigbus_until_enabled(profile):
    m = make_machine(profile)
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.mmap(PID, "D", 2, 0, 0x4000, VA + PUD_SIZE)
    m.access(PID, VA)
    m.access(PID, VA + PUD_SIZE)
    dev = m.device("D")
    assert dev.config_write(4, 2, 0x0006) == 0 and m.zap_journal == []     # MEMORY still set: no zap
    assert dev.config_write(4, 2, 0x0004) == 0
    assert [(z.vma.vm_pgoff >> 28, z.zapped.level) for z in m.zap_journal] == [(0, "pud"), (2, "pte")]
    assert dev.memory_lock.write_acquisitions == 2 and not dev.memory_lock.writer
    r = m.access(PID, VA + 0x123456)
    assert r.ret_name == "VM_FAULT_SIGBUS" and r.signals[0].addr == VA + 0x123456
    # a write of COMMAND with MEMORY clear zaps again even though memory is already off
    m.zap_journal.clear()
    dev.config_write(4, 1, 0x00)
    assert m.zap_journal == []                                   # nothing left to zap, but it ran
    assert dev.memory_lock.write_acquisitions == 3
    dev.config_write(4, 4, 0x00100006)                            # dword write covering COMMAND
    m.tasks.thread(PID).handle_signals()
    assert m.access(PID, VA + 0x123456).ret_name == "VM_FAULT_NOPAGE"


def test_config_write_argument_errors():
    dev = make_machine().device("D")
    assert dev.config_write(5, 2, 0) == -22
    assert dev.config_write(4, 3, 0) == -22
    assert dev.config_write(256, 1, 0) == -22
    assert dev.config_write(4, 2, 0x10000) == -22


def test_pm_ctrl_d3hot_zaps_and_d0_restores():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.access(PID, VA)
    dev = m.device("D")
    dev.config_write(0x44, 2, 0x0003)
    assert [z.zapped.level for z in m.zap_journal] == ["pud"] and dev.pdev.current_state == 3
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_SIGBUS")]
    dev.config_write(0x44, 2, 0x0000)
    m.tasks.thread(PID).handle_signals()
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_NOPAGE")]


def test_reset_zaps_and_next_fault_repopulates():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.access(PID, VA)
    dev = m.device("D")
    dev.pdev.current_state = 3
    assert dev.ioctl_reset() == 0
    assert dev.pdev.current_state == 0 and [z.zapped.level for z in m.zap_journal] == ["pud"]
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_NOPAGE")]
    dev.pdev.reset_works = False
    assert dev.ioctl_reset() == -22


def test_low_power_entry_zaps_engages_runtime_pm_and_exit_restores():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.access(PID, VA)
    dev = m.device("D")
    assert dev.low_power_entry() == 0
    assert [z.zapped.level for z in m.zap_journal] == ["pud"]
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_SIGBUS")]
    assert dev.low_power_entry() == -22                  # already engaged: still zapped first
    assert dev.memory_lock.write_acquisitions == 2
    assert dev.low_power_exit() == 0
    m.tasks.thread(PID).handle_signals()
    assert calls_named(m.access(PID, VA)) == [(18, "VM_FAULT_NOPAGE")]


def test_pte_only_range_after_madvise_keeps_ptes_under_zap_of_other_pages():
    m = make_machine()
    m.mmap(PID, "D", 0, 0, PUD_SIZE, VA)
    m.madvise(PID, VA, PMD_SIZE, MADV_NOHUGEPAGE)
    for i in range(4):
        m.access(PID, VA + i * 0x1000)
    out = m.device("D").zap(0x1000, 0x2000)
    assert [z.zapped for z in out] == [Zapped("pte", VA + 0x1000, 0x2000)]
    assert m.tasks.process(PID).mm.pgtable.counts() == (0, 0, 2)
