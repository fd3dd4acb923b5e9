"""The host tells userspace: a MemoryFailureEvent per record on the test's own unix events
directory, or on NETLINK_USERSOCK inside the test's own network namespace; the device's
error interrupt reaches the host; a synchronous (SEA-like) report signals the consumer."""
from __future__ import annotations

import os

import pytest

from hugepfn.testing import assert_no_signal, assert_signal

from .test_serve_and_attach import BACKENDS
POISON = 0x20_1040
POISON_BLOCK = 0x20_1000        # the 4 KiB block the record reports (the default granularity)
PFN = 0x100201


def _expect_event(event, host, policy="upstream"):
    assert (event.pfn, event.device, event.bar, event.bar_offset) == (PFN, "0000:01:00.0", 2, POISON_BLOCK)
    assert (event.policy, event.result, event.profile) == (policy, "Recovered", host.machine.profile.name)


def test_event_on_this_tests_unix_directory(hugepfn_host, hugepfn_events_dir):
    assert os.environ["HUGEPFN_EVENTS_DIR"] == str(hugepfn_events_dir)
    host = hugepfn_host(events="unix")
    host.spawn(4242, "qemu").mmap_bar("gpu", 2)
    with host.subscribe() as sub:
        host.poison("gpu", bar=2, offset=POISON)
        event = sub.receive(timeout=5)
        assert event is not None, "no event within 5 s"
        _expect_event(event, host)
        assert sub.receive(timeout=0.2) is None         # exactly one event for one record


def test_event_on_netlink_in_a_private_namespace(hugepfn_host, hugepfn_netns):
    host = hugepfn_host(events="netlink", netns=hugepfn_netns, policy="hard-offline")
    host.spawn(4242, "qemu").mmap_bar("gpu", 2)
    with host.subscribe() as sub:
        assert sub.describe() == f"NETLINK_USERSOCK group 27 in netns {hugepfn_netns}"
        host.poison("gpu", bar=2, offset=POISON)
        event = sub.receive(timeout=5)
        assert event is not None, "no event within 5 s"
        _expect_event(event, host, "hard-offline")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_error_interrupt_reaches_the_host_and_the_consumer_is_signalled(hugepfn_host, backend):
    host = hugepfn_host(backend=backend, policy="hard-offline")
    proc = host.spawn(4242, "qemu")
    bar = proc.mmap_bar("gpu", 2)
    bar.access(0x20_0000)
    result = host.poison("gpu", bar=2, offset=POISON)
    assert result.interrupted                           # MSI-X error vector -> eventfd
    assert [(r.record.sequence, r.pfn, r.ret) for r in result.records] == [(1, PFN, 0)]
    assert host.process_errors("gpu").records == []    # the queue was drained
    assert_signal(bar.access(0x20_1040), "BUS_MCEERR_AR", addr=bar.va(0x20_1040), lsb=12, tid=4242)


def test_sync_report_signals_the_consuming_thread(hugepfn_host):
    host = hugepfn_host(ghes="sync")
    proc = host.spawn(4242, "qemu", [4242, 4243])
    bar = proc.mmap_bar("gpu", 2)
    result = host.poison("gpu", bar=2, offset=POISON, current=4243)
    assert result.rets == [0]
    assert_signal(result, "BUS_MCEERR_AR", addr=bar.va(0x20_1000), lsb=12, tid=4243)


def test_records_queued_before_the_host_looked_are_handled_later(hugepfn_host):
    host = hugepfn_host()
    host.spawn(4242, "qemu").mmap_bar("gpu", 2)
    first = host.poison("gpu", bar=2, offset=POISON, process=False)
    second = host.poison("gpu", bar=2, offset=0x30_0000, process=False)
    assert (first.records, second.injected["sequence"]) == ([], 2)
    records = host.process_errors("gpu").records
    assert [(r.pfn, r.ret) for r in records] == [(PFN, 0), (0x100300, 0)]
    assert_no_signal(host)
