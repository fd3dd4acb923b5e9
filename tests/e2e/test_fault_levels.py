"""Faulting in a BAR mapped over vfio-user: PUD (1 GiB BAR), PMD and PTE leaves with the
driver calls the v6.15+ vfio-pci huge_fault makes (order 18 -> 9 -> 0)."""
from __future__ import annotations

from hugepfn.host.mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_NOPAGE
from hugepfn.testing import assert_mapping, assert_no_signal

MiB, GiB = 1 << 20, 1 << 30


def test_pmd_when_the_bar_is_smaller_than_a_gib(hugepfn_host):
    host = hugepfn_host()
    bar = host.spawn(100, "app").mmap_bar("gpu", 2)
    res = bar.access(0x40_1234)
    assert res.calls == [(18, VM_FAULT_FALLBACK), (9, VM_FAULT_NOPAGE)]
    assert_no_signal(res)
    assert_mapping(res, level="pmd")
    assert_mapping(bar, bar.addr + 0x40_1234, "pmd", pfn=0x100401)


def test_whole_bar_touch_is_32_pmd_faults(hugepfn_host):
    host = hugepfn_host()
    proc = host.spawn(100, "app")
    bar = proc.mmap_bar("gpu", 2)
    touched = bar.touch()
    assert (touched.accesses, touched.faults, touched.signals) == (64 * MiB // 4096, 32, [])
    assert host.machine.summary()["100"] == {"pud": 0, "pmd": 32, "pte": 0, "faults": 32}


def test_pte_when_offset_and_address_disagree_on_2m_alignment(hugepfn_host):
    host = hugepfn_host()
    bar = host.spawn(100, "app").mmap_bar("gpu", 2, length=4 * MiB, offset=0x10000)
    res = bar.access(0x11000)
    assert res.ret == VM_FAULT_NOPAGE and res.calls[-1] == (0, VM_FAULT_NOPAGE)
    assert_mapping(res, level="pte")
    assert_mapping(bar, bar.va(0x11000), "pte", pfn=0x100011)


def test_pud_on_a_gib_bar(hugepfn_host):
    host = hugepfn_host(profile="gpu-8g")
    bar = host.spawn(100, "app").mmap_bar("gpu", 2, length=GiB)
    res = bar.access(0x1234)
    assert res.calls == [(18, VM_FAULT_NOPAGE)]
    assert_mapping(bar, bar.addr, "pud", pfn=host.pfn("gpu", 2))


def test_memory_disable_zaps_and_the_next_access_is_sigbus(hugepfn_host):
    from hugepfn.host.mm.vm_fault import VM_FAULT_SIGBUS
    from hugepfn.testing import assert_signal

    host = hugepfn_host()
    bar = host.spawn(100, "app").mmap_bar("gpu", 2)
    bar.access(0)
    assert host.devices["gpu"].host_device.config_write(0x4, 2, 0x0004) == 0     # COMMAND: MEMORY off
    assert_mapping(bar, bar.addr, None)
    res = bar.access(0x1234)
    assert res.ret == VM_FAULT_SIGBUS
    [sig] = assert_signal(res, "BUS_ADRERR", addr=bar.addr + 0x1234, lsb=None)
    assert sig.addr_lsb is None
