"""One poison event end to end through the Python API: control channel -> device record and
error interrupt -> GhesErrorSource over vfio-user -> memory_failure -> signals -> event.

Host: tiny profile, BAR2 (64 MiB) placed by firmware at 0x100000000 (pfn 0x100000), process
qemu (pid 4242, threads 4242/4243) mapping BAR2 at 0x7f0000000000."""
from __future__ import annotations

import errno

import pytest

from hugepfn.abi.cper import CPER_MEM_ERR_MULTI_ECC
from hugepfn.host.events import subscriber
from hugepfn.host.events import publisher as make_publisher
from hugepfn.host.ghes import MEMORY_FAILURE_FIFO_SIZE, GhesErrorSource
from hugepfn.host.memory_failure import MF_ACTION_REQUIRED
from hugepfn.host.memory_failure.hardware import EHWPOISON  # noqa: F401  (documents the _DONE set)
from hugepfn.host.tasks import BUS_MCEERR_AO, BUS_MCEERR_AR

from .conftest import VA

BAR2 = 0x1_0000_0000
PFN = 0x100123
OFFSET = 0x123000


def ghes_lines(seq: int, phys: int, mask: int = 0xFFFFFFFFFFFFF000) -> list[str]:
    pfx = f"{{{seq}}}[Hardware Error]: "
    return [f"{pfx}Hardware error from APEI Generic Hardware Error Source: 0",
            f"{pfx}event severity: recoverable", f"{pfx} Error 0, type: recoverable",
            f"{pfx}  section_type: memory error", f"{pfx}  physical_address: 0x{phys:016x}",
            f"{pfx}  physical_address_mask: 0x{mask:016x}", f"{pfx}  error_type: 3, multi-bit ECC"]


def sig(s) -> tuple:
    return (s.tid, s.signo, s.code, s.addr, s.addr_lsb, s.delivered)


@pytest.fixture
def setup(serve, attach):
    def make(early_kill=1, register=True, kernel="7.0", policy="upstream", **ghes_args):
        served = serve()
        host = attach(served, kernel=kernel, early_kill=early_kill, policy=policy)
        assert host.placements[2].address == BAR2
        if register:
            host.register()
        host.mmap()
        ghes = GhesErrorSource(host.machine, "gpu", host.client, **ghes_args)
        return served, host, ghes
    return make


def test_async_report_signals_early_kill_processes_ao_and_publishes_the_event(setup, tmp_path, monkeypatch):
    events_dir = tmp_path / "events"
    monkeypatch.setenv("HUGEPFN_EVENTS_DIR", str(events_dir))
    with subscriber("unix") as sub, make_publisher("unix") as pub:
        served, host, ghes = setup(publisher=pub)
        assert host.machine.access(4242, VA + OFFSET).ret            # mapped (PMD) before the poison
        with served.control() as c:
            reply = c.inject(bar=2, offset=OFFSET + 0x456, granularity="4K")
        assert reply["sequence"] == 1
        assert ghes.wait(2.0) is True
        [out] = ghes.process_pending()
        event = sub.receive(2.0)
    assert ghes.interrupts == 1
    assert (out.record.sequence, out.record.bar, out.record.bar_offset, out.record.physical_addr,
            out.granularity, out.record.error_type) == (1, 2, OFFSET, OFFSET, 0x1000, CPER_MEM_ERR_MULTI_ECC)
    assert (out.phys, out.pfn, list(out.pfns), out.flags, out.current, out.ret, out.result, out.action) == \
        (BAR2 + OFFSET, PFN, [PFN], 0, "kworker", 0, "Recovered", "signalled")
    # the kworker has no mm: nobody gets AR; the early-kill process gets AO from its first thread
    assert [sig(s) for s in out.signals] == [(4242, "SIGBUS", BUS_MCEERR_AO, VA + OFFSET, 12, True)]
    assert out.log == ghes_lines(1, BAR2 + OFFSET) + [
        "Memory failure: 0x100123: Sending SIGBUS to qemu:4242 due to hardware memory corruption",
        "Memory failure: 0x100123: recovery action for non struct page pfn: Recovered"]
    assert event is not None and event.seq == out.event.seq
    assert (event.pfn, event.device, event.bar, event.bar_offset, event.granularity, event.policy, event.action,
            event.result, event.signals_sent, event.consumption_count, event.profile) == \
        (PFN, "0000:01:00.0", 2, OFFSET, 0x1000, "upstream", "signalled", "Recovered", 1, 0, "7.0")
    assert [(s.tid, s.code, s.addr, s.lsb) for s in event.signals] == [(4242, BUS_MCEERR_AO, VA + OFFSET, 12)]
    # the host now knows the page is bad: the next load machine-checks and gets AR as current
    res = host.machine.access(4243, VA + OFFSET + 8)
    assert res.consumed and [sig(s) for s in res.signals] == [(4243, "SIGBUS", BUS_MCEERR_AR, VA + OFFSET, 12, True)]


def test_async_report_without_early_kill_signals_nobody_but_recovers(setup):
    served, host, ghes = setup(early_kill=0)
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()
    assert (out.ret, out.result, out.signals) == (0, "Recovered", [])
    assert out.log[-1] == "Memory failure: 0x100123: recovery action for non struct page pfn: Recovered"


def test_second_poison_of_the_same_page_repeats_everything(setup):
    served, host, ghes = setup()
    outcomes = []
    for _ in range(2):
        with served.control() as c:
            c.inject(bar=2, offset=OFFSET)
        outcomes += ghes.process_pending()
    first, second = outcomes
    assert (first.ret, second.ret) == (0, 0)
    assert (first.result, second.result) == ("Recovered", "Recovered")
    # signalled again; the first SIGBUS is still pending (4242 has not run), so not queued twice
    assert [sig(s) for s in second.signals] == [(4242, "SIGBUS", BUS_MCEERR_AO, VA + OFFSET, 12, False)]
    assert second.log[7:] == first.log[7:]
    assert second.record.sequence == 2


def test_poison_outside_any_registered_space_is_ignored_with_ebusy(setup):
    served, host, ghes = setup(register=False)
    host.machine.access(4242, VA + OFFSET)
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()
    assert (out.ret, out.result, out.action, out.signals) == (-errno.EBUSY, "Ignored", "ignored", [])
    assert out.log[7:] == ["Memory failure: 0x100123: recovery action for non struct page pfn: Ignored"]
    assert out.event.result == "Ignored" and out.event.signals_sent == 0
    # GHES (async) ignores the return value; the consumer learns on its load: the machine check
    # gets -EBUSY as well, x86 says so and forces a plain SIGBUS (SI_KERNEL, no address)
    klog = len(host.machine.klog)
    res = host.machine.access(4242, VA + OFFSET + 0x10)
    assert res.consumed and [(s.tid, s.signo, s.code, s.addr, s.forced) for s in res.signals] == \
        [(4242, "SIGBUS", None, None, True)]
    assert host.machine.klog.lines(klog) == [
        "mce: Uncorrected hardware memory error in user-access at 100123010",
        "Memory failure: 0x100123: recovery action for non struct page pfn: Ignored",
        "mce: Memory error not recovered"]


def test_sync_report_on_a_registered_page_gives_ar_to_the_consumer(setup):
    served, host, ghes = setup(early_kill=0, mode="sync", current=4243)
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()
    assert (out.flags, out.current, out.ret, out.result) == (MF_ACTION_REQUIRED, 4243, 0, "Recovered")
    assert [sig(s) for s in out.signals] == [(4243, "SIGBUS", BUS_MCEERR_AR, VA + OFFSET, 12, True)]
    assert out.log[7:] == ["Memory failure: 0x100123: Sending SIGBUS to qemu:4243 due to hardware memory corruption",
                           "Memory failure: 0x100123: recovery action for non struct page pfn: Recovered"]


def test_sync_report_on_an_unregistered_page_forces_a_plain_sigbus_from_task_work(setup):
    served, host, ghes = setup(register=False, mode="sync")
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending(current=4243)
    assert (out.flags, out.current, out.ret, out.result) == (MF_ACTION_REQUIRED, 4243, -errno.EBUSY, "Ignored")
    assert [(s.tid, s.signo, s.code, s.addr, s.forced) for s in out.signals] == [(4243, "SIGBUS", None, None, True)]
    assert out.log[7:] == ["Memory failure: 0x100123: recovery action for non struct page pfn: Ignored",
                           "0x100123: Sending SIGBUS to qemu:4243 due to hardware memory corruption"]


def test_sync_mode_without_a_user_context_falls_back_to_the_queue(setup):
    served, host, ghes = setup(mode="sync")
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()                          # no current given
    assert (out.flags, out.current, out.ret) == (MF_ACTION_REQUIRED, "kworker", 0)
    assert [sig(s) for s in out.signals] == [(4242, "SIGBUS", BUS_MCEERR_AO, VA + OFFSET, 12, True)]


def test_poison_while_no_host_is_attached_waits_in_the_queue(serve, attach):
    from hugepfn.host.ghes import GhesErrorSource

    served = serve("gpu-8g")                                # 64-entry error queue
    n = MEMORY_FAILURE_FIFO_SIZE + 1
    with served.control() as c:
        for i in range(n):
            c.inject(bar=2, offset=i << 12)
        status = c.status()
    assert (status["attached"], status["error_queue"]["count"]) == (False, n)
    assert served.device.interrupts_without_sink == n      # each interrupt went nowhere; the records stay
    host = attach(served, early_kill=1)
    base = host.placements[2].address
    host.register()
    ghes = GhesErrorSource(host.machine, "gpu", host.client, irq="msix",
                           error_vector=served.device.profile.error_vector)
    assert ghes.wait(0) is False                            # nothing fired since we attached
    outcomes = ghes.process_pending()
    assert [o.record.sequence for o in outcomes] == list(range(1, n + 1))
    # one interrupt service queued 17 pfns; the 16-entry kfifo took 16, the 17th overflowed
    assert [o.ret for o in outcomes] == [0] * MEMORY_FAILURE_FIFO_SIZE + [None]
    assert outcomes[-1].log[-1] == f"Memory failure: buffer overflow when queuing memory failure at {(base >> 12) + 16:#x}"
    assert all(o.current == "kworker" for o in outcomes[:-1])
    with served.control() as c:
        assert c.status()["error_queue"]["count"] == 0 and c.status()["attached"] is True


def test_msix_and_err_interrupts_both_wake_the_error_source(setup):
    for irq in ("msix", "err"):
        served, host, ghes = setup(irq=irq, error_vector=1)
        assert ghes.wait(0) is False
        with served.control() as c:
            c.inject(bar=2, offset=0)
        assert ghes.wait(2.0) is True
        assert [o.pfn for o in ghes.process_pending()] == [BAR2 >> 12]
        assert ghes.interrupts == 1 and ghes.wait(0) is False


def test_granularity_sets_the_hardware_range_but_ghes_reports_one_pfn(setup):
    from hugepfn.host.memory_failure import memory_failure_of

    served, host, ghes = setup()
    with served.control() as c:
        c.inject(bar=2, offset=0x456789, granularity="2M")
        c.inject(bar=2, offset=0x1040, granularity=64)
    big, small = ghes.process_pending()
    assert (big.pfn, big.pfns, big.granularity) == (0x100400, range(0x100400, 0x100600), 2 << 20)
    assert big.log[5] == "{1}[Hardware Error]:   physical_address_mask: 0xffffffffffe00000"
    assert (small.pfn, small.pfns, small.granularity, small.phys) == (0x100001, range(0x100001, 0x100002), 64,
                                                                     BAR2 + 0x1040)
    assert small.event.granularity == 64 and small.event.bar_offset == 0x1040
    mf = memory_failure_of(host.machine)
    assert [o.pfn for o in mf.outcomes] == [0x100400, 0x100001]      # one memory_failure per record
    assert len(mf.hardware.pfns) == 513                              # but every page of the block is bad


def test_kernel_6_15_ghes_drops_a_pfn_without_struct_page(setup):
    served, host, ghes = setup(kernel="6.16", register=False)
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()
    assert (out.ret, out.result, out.signals, out.event.result) == (None, None, [], "Ignored")
    assert out.log == ghes_lines(1, BAR2 + OFFSET) + [
        "[Firmware Warn]: GHES: Invalid address in generic error data: 0x100123000"]
    klog = len(host.machine.klog)
    res = host.machine.access(4242, VA + OFFSET)
    assert [(s.signo, s.code) for s in res.signals] == [("SIGBUS", None)]
    assert host.machine.klog.lines(klog)[-3:] == ["mce: Uncorrected hardware memory error in user-access at 100123000",
                                                  "Memory failure: 0x100123: memory outside kernel control",
                                                  "mce: Memory error not recovered"]


def test_hard_offline_policy_zaps_on_the_report(setup):
    served, host, ghes = setup(policy="hard-offline")
    assert host.machine.access(4242, VA + OFFSET).leaf.level == "pmd"
    with served.control() as c:
        c.inject(bar=2, offset=OFFSET)
    [out] = ghes.process_pending()
    assert (out.action, out.result) == ("zapped", "Recovered")
    assert [(z.zapped.va, z.zapped.length, z.zapped.level) for z in out.mf.zapped] == [(VA, 2 << 20, "pmd")]
    assert out.event.action == "zapped"


def test_bad_arguments_are_value_errors(setup):
    served, host, ghes = setup()
    with pytest.raises(ValueError, match="mode must be"):
        GhesErrorSource(host.machine, "gpu", host.client, mode="eventually")
    with pytest.raises(ValueError, match="needs the device's error_vector"):
        GhesErrorSource(host.machine, "gpu", host.client, irq="msix")


def test_records_firmware_cannot_translate_or_that_claim_too_much_are_bounded(setup):
    """A record is the device's word: a BAR that does not exist is reported without an address
    (no memory_failure); a length beyond its granularity marks at most the granularity."""
    from hugepfn.abi.cper import build_record
    from hugepfn.host.memory_failure import memory_failure_of

    served, host, ghes = setup()
    queue = served.device.registers.queue
    queue.push(build_record(sequence=90, bar=7, bar_offset=0, length=4096, dpa=0, granularity=4096))
    queue.push(build_record(sequence=91, bar=2, bar_offset=0x200000, length=1 << 60, dpa=0x200000,
                            granularity=0x200000))
    nowhere, huge = ghes.process_pending()
    assert (nowhere.phys, nowhere.pfn, nowhere.ret) == (None, None, None)
    assert not any("physical_address" in line for line in nowhere.log)
    assert (huge.pfn, huge.pfns, huge.ret) == (0x100200, range(0x100200, 0x100400), 0)
    assert len(memory_failure_of(host.machine).hardware.pfns) == 512


@pytest.mark.parametrize("kernel", ["7.3", "6.16", "6.1"])
def test_a_synchronous_record_that_queues_nothing_kills_the_consumer(setup, kernel):
    """ghes_do_proc's `sync && !queued` force_sig(SIGBUS) is in Debian's 6.1, 6.12 and 7.3
    sources alike (drivers/acpi/apei/ghes.c), so every profile kills."""
    killed = True
    from hugepfn.abi.cper import build_record

    served, host, ghes = setup(kernel=kernel, register=False, mode="sync", current=4243)
    served.device.registers.queue.push(build_record(sequence=7, bar=9, bar_offset=0, length=4096, dpa=0,
                                                    granularity=4096))
    [out] = ghes.process_pending()
    assert (out.pfn, out.ret) == (None, None)
    if killed:
        assert [(s.tid, s.signo, s.code, s.forced) for s in out.signals] == [(4243, "SIGBUS", None, True)]
        assert out.log[-1] == ("GHES GHES.0: [Hardware Error]: GHES: qemu:4243: synchronous unrecoverable error "
                               "(SIGBUS)")
    else:
        assert out.signals == [] and "SIGBUS" not in " ".join(out.log)
