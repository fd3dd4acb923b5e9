"""Poison is a property of the device's memory: loads machine-check before any report, stores
consume nothing, a repair-by-write profile heals on a covering store, a device-side repair
clears at once, and a load through the BAR mapping machine-checks too."""
from __future__ import annotations

import pytest

from hugepfn.testing import PoisonConsumed, assert_no_signal, assert_signal


def _mapped(hugepfn_host, policy="upstream", profile="tiny"):
    host = hugepfn_host(policy=policy, profile=profile)
    proc = host.spawn(4242, "qemu", [4242, 4243])
    bar = proc.mmap_bar("gpu", 2)
    bar.access(0x200000)
    return host, proc, bar


@pytest.mark.parametrize("policy", ["upstream", "hard-offline", "split"])
def test_a_load_machine_checks_before_the_report(hugepfn_host, policy):
    host, proc, bar = _mapped(hugepfn_host, policy)
    host.poison("gpu", bar=2, offset=0x201000, process=False)
    hit = bar.access(0x201040, tid=4243)
    assert hit.consumed
    assert_signal(hit, "BUS_MCEERR_AR", addr=bar.va(0x201000), lsb=12, tid=4243)
    assert host.log()[-3] == "mce: Uncorrected hardware memory error in user-access at 100201040"
    assert (hit.leaf is None) == (policy != "upstream")    # what maps it after the handling (zap or split)


def test_only_the_bad_line_machine_checks_before_the_report(hugepfn_host):
    host, proc, bar = _mapped(hugepfn_host)
    host.poison("gpu", bar=2, offset=0x201040, granularity=64, process=False)
    assert_no_signal(bar.access(0x201000))                      # another line of the page
    assert bar.access(0x201070).consumed                         # the bad line


def test_a_store_consumes_nothing_and_leaves_the_poison(hugepfn_host):
    host, proc, bar = _mapped(hugepfn_host)
    host.poison("gpu", bar=2, offset=0x201000, process=False)
    assert_no_signal(bar.access(0x201000, write=True))
    bar.write(0x201000, bytes(4096))                             # tiny does not repair by write
    assert bar.access(0x201000).consumed


def test_a_covering_store_repairs_on_a_repair_by_write_profile(hugepfn_host):
    host, proc, bar = _mapped(hugepfn_host, profile="rebar")
    host.poison("gpu", bar=2, offset=0x201000, process=False)
    bar.write(0x201000, bytes(32))                               # covers no whole line: still bad
    assert bar.access(0x201000).consumed
    bar.write(0x201000, bytes(4096))
    assert_no_signal(bar.access(0x201000, tid=4243))


def test_a_device_side_repair_clears_the_line_at_once(hugepfn_host):
    host, proc, bar = _mapped(hugepfn_host)
    served = host.devices["gpu"].served
    host.poison("gpu", bar=2, offset=0x201000, process=False)
    with served.control() as control:
        assert control.repair(bar=2, offset=0x201000, length=4096)["cleared"] == 4096
    assert_no_signal(bar.access(0x201000))


def test_a_load_through_the_bar_mapping_machine_checks(hugepfn_host):
    host, proc, bar = _mapped(hugepfn_host)
    bar.write(0x202000, b"good")
    host.poison("gpu", bar=2, offset=0x201000, process=False)
    assert bar.read(0x202000, 4) == b"good"
    with pytest.raises(PoisonConsumed) as exc:
        bar.read(0x200ff0, 0x20, tid=4243)
    assert exc.value.addr == bar.va(0x201000)
    assert_signal(exc.value, "BUS_MCEERR_AR", addr=bar.va(0x201000), tid=4243)
