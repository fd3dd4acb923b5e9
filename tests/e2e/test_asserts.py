"""The assertion helpers on their own: what they accept, what they return, their messages."""
from __future__ import annotations

import pytest

from hugepfn.host.tasks import Signal
from hugepfn.testing import assert_mapping, assert_no_signal, assert_signal

AR = Signal(tid=7, signo="SIGBUS", code=4, addr=0x7F0000201000, addr_lsb=12)
AO = Signal(tid=8, signo="SIGBUS", code=5, addr=0x7E0000201000, addr_lsb=12, delivered=False)


def test_signal_matching_and_counts():
    assert assert_signal([AR, AO], "BUS_MCEERR_AO", tid=8) == [AO]
    assert assert_signal([AR, AO], code=None, lsb=12, count=2) == [AR, AO]
    assert assert_signal([AR, AR], addr=0x7F0000201000, count=None) == [AR, AR]
    with pytest.raises(AssertionError, match=r"expected exactly 1 signal SIGBUS BUS_MCEERR_AR lsb=12, found 2 matching"):
        assert_signal([AR, AR])
    with pytest.raises(AssertionError) as info:
        assert_signal([AO], "BUS_MCEERR_AR", tid=8)
    assert str(info.value) == ("expected exactly 1 signal SIGBUS BUS_MCEERR_AR lsb=12 tid=8, found 0 matching; "
                               "signals sent:\n  tid=8 SIGBUS BUS_MCEERR_AO addr=0x7e0000201000 lsb=12 "
                               "(not queued: already pending)")
    with pytest.raises(ValueError, match=r"unknown si_code 'BUS_MCEERR_XX' \(known: BUS_ADRERR, BUS_MCEERR_AO, "):
        assert_signal([AR], "BUS_MCEERR_XX")
    with pytest.raises(TypeError, match=r"cannot find signals in int"):
        assert_signal(3)


def test_no_signal():
    assert_no_signal([])
    assert_no_signal([AR], signo="SIGSEGV")
    with pytest.raises(AssertionError, match=r"^expected no SIGBUS, but 1 sent:\n  tid=7 SIGBUS BUS_MCEERR_AR"):
        assert_no_signal([AR], signo="SIGBUS")


def test_mapping_sources_and_messages(hugepfn_host):
    host = hugepfn_host(attach=False)
    assert_signal(host, count=0)                                    # a Host: every signal sent (none)
    host = hugepfn_host()
    first = host.spawn(100, "a")
    bar = first.mmap_bar("gpu", 2)
    bar.access(0)
    leaf = assert_mapping(host.machine, bar.addr + 0x1000, "pmd", pfn=0x100001)   # one process: no pid needed
    assert (leaf.level, leaf.va, leaf.pfn) == ("pmd", bar.addr, 0x100000)
    host.spawn(200, "b")
    with pytest.raises(TypeError, match=r"^the machine has 2 user processes: pass pid=$"):
        assert_mapping(host, bar.addr, "pmd")
    assert_mapping(host, bar.addr, "pmd", pid=100)
    assert_mapping(host, bar.addr, None, pid=200)
    with pytest.raises(AssertionError, match=r"^expected 0x7f0000001000 to map pfn 0x100002 in pid 100, "
                                             r"it maps 0x100001 \(PMD leaf va=0x7f0000000000 pfn=0x100000\)$"):
        assert_mapping(first, bar.addr + 0x1000, "pmd", pfn=0x100002)
    with pytest.raises(AssertionError, match=r"^expected no mapping at 0x7f0000000000 in pid 100, found a PMD"):
        assert_mapping(bar, bar.addr, None)
    with pytest.raises(AssertionError, match=r"^expected a PTE mapping at 0x7f0000200000 in pid 100, "
                                             r"but nothing maps it$"):
        assert_mapping(bar, bar.addr + 0x200000, "pte")
    with pytest.raises(ValueError, match=r"^level must be one of pud, pmd, pte or None, got 'p4d'$"):
        assert_mapping(bar, bar.addr, "p4d")


def test_poison_persists_in_the_state_dir(hugepfn_served_device, tmp_path):
    served = hugepfn_served_device("tiny", "python", state_dir=tmp_path / "state")
    with served.control() as control:
        control.inject(bar=2, offset=0x5000, granularity=4096)
    served.close()
    again = hugepfn_served_device("tiny", "python", state_dir=tmp_path / "state")
    with again.control() as control:
        status = control.status()
    assert (status["poisoned"], status["poisoned_pages"]) == (
        [{"bar": 2, "offset": 0x5000, "length": 4096, "dpa": 0x5000}], 1)
