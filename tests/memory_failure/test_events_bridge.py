"""memory_failure publishes MemoryFailureEvents through hugepfn.host.events when a publisher is
set (real unix-socket transport, no netlink needed)."""
from __future__ import annotations

from hugepfn.host import events
from hugepfn.host.memory_failure import MF_ACTION_REQUIRED, memory_failure_of

from .conftest import GiB, USEMEM_PFN, VA, nvgrace_machine


def test_report_and_consumption_loop_events(tmp_path):
    m = nvgrace_machine(policy="hard-offline")
    assert m.mmap(4242, "gpu", 4, 0, GiB, VA) == 0
    mfo = memory_failure_of(m)
    with events.subscriber("unix", events_dir=tmp_path) as sub, events.publisher("unix", events_dir=tmp_path) as pub:
        mfo.publisher = pub
        pfn = USEMEM_PFN + 0x123
        assert mfo.memory_failure(pfn, MF_ACTION_REQUIRED, m.tasks.thread(4243)) == 0
        ev = sub.receive(timeout=5)
        assert (ev.pfn, ev.device, ev.bar, ev.bar_offset, ev.granularity, ev.policy, ev.action, ev.result,
                ev.signals_sent, ev.profile) == (pfn, "0000:09:01.0", 4, 0x123000, 4096, "hard-offline", "zapped",
                                                 "Recovered", 1, "7.0")
        assert [(s.tid, s.code, s.addr, s.lsb) for s in ev.signals] == [(4243, 4, VA + 0x123000, 12)]
        mfo.guard.threshold = 1
        m.access(4242, VA + 0x123000)             # VM_FAULT_HWPOISON: a consumption by fault
        loop = sub.receive(timeout=5)
        assert (loop.action, loop.consumption_count, loop.pfn, loop.bar) == ("consumption-loop", 1, pfn, 4)
        assert mfo.memory_failure(0x9000000, 0) == -16          # Ignored: no device, no event
        assert sub.receive(timeout=0.2) is None
