"""One poisoned cacheline in a PMD-mapped BAR, end to end: injected through the device's
control socket, read from BAR0's error queue by the host's firmware-first error source,
memory_failure from a kworker, then the consuming access — under each policy."""
from __future__ import annotations

import pytest

from hugepfn.host.mm.vm_fault import VM_FAULT_FALLBACK, VM_FAULT_HWPOISON, VM_FAULT_NOPAGE
from hugepfn.testing import assert_mapping, assert_no_signal, assert_signal

POISON = 0x20_1040            # BAR2 offset of the bad cacheline: page 0x201, PMD 0x200000
PFN = 0x100201                # BAR2 at bus address 4 GiB


def _mapped_host(hugepfn_host, policy, **kw):
    host = hugepfn_host(policy=policy, **kw)
    proc = host.spawn(4242, "qemu", [4242, 4243])
    bar = proc.mmap_bar("gpu", 2)
    assert bar.touch().faults == 32                 # every 2 MiB a PMD leaf
    return host, proc, bar


@pytest.mark.hugepfn_kernel("6.19", "7.0")
@pytest.mark.parametrize("policy", ["upstream", "hard-offline", "split"])
def test_the_report_signals_nobody_without_early_kill(hugepfn_host, policy):
    host, proc, bar = _mapped_host(hugepfn_host, policy)
    result = host.poison("gpu", bar=2, offset=POISON, granularity=64)
    assert (result.injected["offset"], result.injected["length"]) == (POISON, 64)
    assert (result.pfns, result.rets) == ([PFN], [0])
    assert_no_signal(result)                        # kworker context: AO to early-kill threads only
    assert host.log()[-1] == f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Recovered"
    expected_leaf = {"upstream": "pmd", "hard-offline": None, "split": None}[policy]
    assert_mapping(proc, bar.va(0x20_1000), expected_leaf)
    assert_mapping(proc, bar.va(0x20_2000), {"upstream": "pmd", "hard-offline": None, "split": "pte"}[policy])


def test_upstream_consumption_machine_checks_and_the_pmd_stays(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "upstream")
    host.poison("gpu", bar=2, offset=POISON)
    res = bar.access(0x20_1234, tid=4243)
    assert res.consumed and res.calls == []
    # memory_failure_pfn as the consuming thread: AR at the page's address in the VMA, lsb 12
    assert_signal(res, "BUS_MCEERR_AR", addr=bar.va(0x20_1000), lsb=12, tid=4243)
    assert_mapping(res, level="pmd")
    again = bar.access(0x20_1234, tid=4243)         # nothing unmapped: it machine-checks again
    assert_signal(again, "BUS_MCEERR_AR", addr=bar.va(0x20_1000), tid=4243)
    assert_no_signal(bar.access(0x20_2000))         # a clean page under the same PMD


def test_hard_offline_refaults_around_the_poison(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "hard-offline")
    host.poison("gpu", bar=2, offset=POISON)
    res = bar.access(0x20_1234, tid=4243)
    # the PMD attempt twice: the per-VMA-lock pass, then its retry under mmap_lock
    assert res.calls == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (0, VM_FAULT_HWPOISON)]
    assert_signal(res, "BUS_MCEERR_AR", addr=bar.va(0x20_1234), lsb=12, tid=4243)   # the faulting address
    assert_mapping(res, level=None)
    clean = bar.access(0x20_3000)       # no PTE was installed: the PMD slot is still empty
    assert clean.calls == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (0, VM_FAULT_NOPAGE)]
    assert_mapping(clean, level="pte")
    assert_mapping(proc, bar.va(0x40_0000), "pmd")  # the neighbouring PMD was never touched
    assert f"MCE: Killing qemu:4243 due to hardware memory corruption fault at {bar.va(0x20_1234):x}" in host.log()


def test_split_keeps_clean_pages_mapped(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "split")
    host.poison("gpu", bar=2, offset=POISON)
    clean = bar.access(0x20_2000)
    assert (clean.calls, clean.ret) == ([], 0)      # split in place: no refault
    assert_mapping(clean, level="pte")
    res = bar.access(0x20_1234, tid=4243)
    assert res.calls == [(0, VM_FAULT_HWPOISON)]
    assert_signal(res, "BUS_MCEERR_AR", addr=bar.va(0x20_1234), lsb=12, tid=4243)


def test_early_kill_monitor_gets_action_optional(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "upstream")
    monitor = host.spawn(5100, "ras-mon", [5100, 5101])
    view = monitor.mmap_bar("gpu", 2, length=4 << 20)
    monitor.set_early_kill(5101)
    result = host.poison("gpu", bar=2, offset=POISON)
    [sig] = assert_signal(result, "BUS_MCEERR_AO", addr=view.va(0x20_1000), lsb=12, tid=5101)
    assert sig.delivered
    assert_no_signal(proc)


def test_a_2m_blast_radius_is_one_report_and_2m_of_bad_memory(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "hard-offline")
    result = host.poison("gpu", bar=2, offset=POISON, granularity=2 << 20)
    # GHES calls memory_failure once, for the pfn of the record's address (the aligned block)
    assert (result.pfns, result.rets) == ([0x100200], [0])
    assert result.poisoned_pfns == list(range(0x100200, 0x100400))
    assert_mapping(proc, bar.va(0x20_0000), None)
    # page 0x3ff was not reported: the driver maps it, the load machine-checks (AR as the
    # consumer), and only then does hard-offline record and zap it
    res = bar.access(0x3F_F000, tid=4243)
    assert res.calls == [(9, VM_FAULT_FALLBACK), (9, VM_FAULT_FALLBACK), (0, VM_FAULT_NOPAGE)] and res.consumed
    assert_signal(res, "BUS_MCEERR_AR", addr=bar.va(0x3F_F000), lsb=12, tid=4243)
    assert_mapping(proc, bar.va(0x3F_F000), None)


def test_unregistered_bar_is_ignored_and_consumption_is_not_recovered(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "upstream", register=False)
    result = host.poison("gpu", bar=2, offset=POISON)
    assert result.rets == [-16]                     # -EBUSY: no pfn_address_space holds it
    assert host.log()[-1] == f"Memory failure: {PFN:#x}: recovery action for non struct page pfn: Ignored"
    res = bar.access(0x20_1000)
    assert [(s.signo, s.code, s.addr) for s in res.signals] == [("SIGBUS", None, None)]   # force_sig(SIGBUS)
    assert host.log()[-1] == "mce: Memory error not recovered"


@pytest.mark.hugepfn_kernel("6.16")
def test_before_6_19_ghes_drops_the_address_and_consumption_is_not_recovered(hugepfn_host):
    host, proc, bar = _mapped_host(hugepfn_host, "upstream")
    assert host.registrations == {("gpu", 2): -95}  # -EOPNOTSUPP: no registration API yet
    result = host.poison("gpu", bar=2, offset=POISON)
    assert (result.pfns, result.rets, result.signals) == ([PFN], [None], [])   # never called
    # the record's address: the 4 KiB block holding POISON (the default granularity)
    assert host.log()[-1] == "[Firmware Warn]: GHES: Invalid address in generic error data: 0x100201000"
    res = bar.access(0x20_1000)
    assert res.consumed
    assert [(s.signo, s.code, s.addr) for s in res.signals] == [("SIGBUS", None, None)]
    assert host.log()[-3:] == ["mce: Uncorrected hardware memory error in user-access at 100201000",
                               f"Memory failure: {PFN:#x}: memory outside kernel control",
                               "mce: Memory error not recovered"]
