"""Processes, threads and the signal rule: a second identical non-RT signal is not queued."""
import pytest

from hugepfn.host.tasks import (BUS_ADRERR, BUS_MCEERR_AO, BUS_MCEERR_AR, PF_MCE_EARLY, PF_MCE_PROCESS,
                                TaskList)


def make():
    tasks = TaskList()
    qemu = tasks.create_process(4242, "qemu", [4242, 4243])
    other = tasks.create_process(5000, "other")
    return tasks, qemu, other


def test_processes_in_creation_order_with_threads_and_own_mm():
    tasks, qemu, other = make()
    assert [p.pid for p in tasks] == [4242, 5000]
    assert [t.tid for t in qemu.threads] == [4242, 4243]
    assert qemu.main_thread.tid == 4242 and other.threads[0].tid == 5000
    assert qemu.mm is not other.mm and qemu.mm.owner is qemu
    assert tasks.thread(4243).process is qemu and tasks.thread(4243).mm is qemu.mm


@pytest.mark.parametrize("pid,tids,msg", [
    (4242, [4242], "pid 4242 already exists"),
    (7, [8], "first thread must be the main thread 7"),
    (9, [9, 4243], "tid 4243 already exists"),
])
def test_bad_task_layout_is_rejected(pid, tids, msg):
    tasks, _, _ = make()
    with pytest.raises(ValueError, match=msg):
        tasks.create_process(pid, "x", tids)


def test_second_pending_sigbus_is_not_queued_and_first_siginfo_wins():
    tasks, qemu, _ = make()
    t = qemu.threads[1]
    first = tasks.force_sig_mceerr(t, BUS_MCEERR_AR, 0x7f0000001000, 12)
    second = tasks.send_sig_mceerr(BUS_MCEERR_AO, 0x7f0000002000, 12, t)
    assert (first.delivered, second.delivered) == (True, False)
    assert t.pending["SIGBUS"] is first
    assert tasks.journal == [first, second] and t.received == [first, second]
    assert second.to_json() == {"tid": 4243, "signo": "SIGBUS", "code": "BUS_MCEERR_AO",
                                "addr": "0x7f0000002000", "addr_lsb": 12, "delivered": False}
    # the other thread of the same process has its own pending set
    third = tasks.force_sig_fault(qemu.threads[0], "SIGBUS", BUS_ADRERR, 0x1000)
    assert third.delivered and third.to_json() == {"tid": 4242, "signo": "SIGBUS", "code": "BUS_ADRERR",
                                                   "addr": "0x1000", "delivered": True}


def test_handled_signal_lets_the_next_one_queue():
    tasks, qemu, _ = make()
    t = qemu.main_thread
    tasks.send_sigkill(t)
    assert tasks.send_sigkill(t).delivered is False
    assert [s.signo for s in t.handle_signals()] == ["SIGKILL"]
    assert not t.pending
    assert tasks.send_sigkill(t).to_json() == {"tid": 4242, "signo": "SIGKILL", "delivered": True}


def test_different_signals_queue_independently():
    tasks, qemu, _ = make()
    t = qemu.main_thread
    assert tasks.send_sigkill(t).delivered
    assert tasks.force_sig_mceerr(t, BUS_MCEERR_AR, 0x2000, 12).delivered
    assert set(t.pending) == {"SIGKILL", "SIGBUS"}


def test_new_thread_inherits_mce_flags_and_kworker_has_no_mm():
    tasks, qemu, _ = make()
    qemu.main_thread.flags = PF_MCE_PROCESS | PF_MCE_EARLY
    t = tasks.add_thread(qemu, 4244)
    assert t.flags == PF_MCE_PROCESS | PF_MCE_EARLY
    kw = tasks.kworker
    assert kw.mm is None and kw.process.is_kthread and kw.process not in list(tasks)
