"""The guest probe (crosscheck/guest/probe.c) built with this machine's gcc and run here, in a
private pid namespace, against a memfd standing in for a device (`memdev`): the process and
thread machinery (chosen pids and tids, comm), the signal handler's records, fork, prctl, touch
and the B/R/G/E framing the converter reads.  No guest, no vfio: what only a kernel with vfio
can show is replayed from recorded guest output (test_replay.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hugepfn.crosscheck.boot import GUEST_DIR
from hugepfn.crosscheck.observe import split_steps

pytestmark = [pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (the probe is built at crosscheck time)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a private pid namespace and ns_last_pid")]

VA = 0x7F0000000000


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out), str(GUEST_DIR / "probe.c")],
                   check=True, capture_output=True)
    return out


def run(probe: Path, tmp_path: Path, steps: str) -> list[str]:
    stepfile = tmp_path / "s.steps"
    stepfile.write_text(steps)
    out = tmp_path / "out.txt"
    env = dict(os.environ, XC_FIFO_DIR=str(tmp_path / "fifo"))
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", str(probe), str(stepfile), str(out)],
                   check=True, timeout=60, env=env)
    return out.read_text().splitlines()


def test_processes_threads_signals_fork_and_prctl(probe, tmp_path):
    lines = run(probe, tmp_path, f"""scenario t
memdev 0 0x400000
proc 4242 qemu 4242 4243
step 1 mmap 4242 0 2 0 0x800000 {VA:#x} 1 3
step 2 access 4243 {VA + 0x1000:#x} 1
step 3 access 4243 {VA + 0x500000:#x} 0
step 4 access 4242 0x7e0000000000 0
step 5 mprotect 4242 {VA:#x} 0x1000 1
step 6 access 4242 {VA + 0x10:#x} 1
step 7 fork 4242 4250 qemu
step 8 access 4250 {VA + 0x2000:#x} 0
step 9 prctl 4242 33 1 1 0 0
step 10 prctl 4242 34 0 0 0 0
step 11 touch 4250 {VA + 0x300000:#x} 0x200000 0x1000 0
step 12 exit 4250 0
end
""")
    assert lines[0] == "S t" and lines[-1] == "Q"
    assert not [line for line in lines if line.startswith("X ") and "open memdev" not in line]
    steps = split_steps(lines)
    assert [steps[i].result for i in range(1, 12)] == [
        ["0"], ["0", "signalled=0"], ["0", "signalled=1"], ["0", "signalled=1"], ["0"], ["0", "signalled=1"],
        ["0", "pid=4250"], ["0", "signalled=0"], ["0"], ["1"], ["0", "accesses=257", f"stopped_at={VA + 0x400000:#x}"]]
    # (tid, signo, si_code, si_addr, lsb): beyond the memfd's end SIGBUS BUS_ADRERR, no VMA
    # SIGSEGV SEGV_MAPERR, a store to PROT_READ SIGSEGV SEGV_ACCERR, each in the faulting thread
    assert steps[3].signals == [(4243, 7, 2, VA + 0x500000, 0)]
    assert steps[4].signals == [(4242, 11, 1, 0x7E0000000000, 0)]
    assert steps[6].signals == [(4242, 11, 2, VA + 0x10, 0)]
    assert steps[11].signals == [(4250, 7, 2, VA + 0x400000, 0)]
    assert steps[12].result == ["killed"] and steps[12].deaths == [(4250, "exit=0")]


def test_an_unknown_op_is_enosys_and_a_write_is_the_threads(probe, tmp_path):
    lines = run(probe, tmp_path, """scenario u
proc 7 q 7
step 1 nosuch 7 1
step 2 write 7 /proc/self/comm renamed
end
""")
    steps = split_steps(lines)
    assert steps[1].result == ["-38", "unknown=nosuch"]      # -ENOSYS, the step is not lost
    assert steps[2].result == ["0"]


def run_with_pid_taken(probe: Path, tmp_path: Path, taken: int, steps: str) -> list[str]:
    """run(), with a process of the namespace holding pid ``taken`` before the probe starts, as a
    kworker that took the pid between the probe's ns_last_pid write and its clone would."""
    stepfile = tmp_path / "s.steps"
    stepfile.write_text(steps)
    out = tmp_path / "out.txt"
    env = dict(os.environ, XC_FIFO_DIR=str(tmp_path / "fifo"), PROBE=str(probe), STEPS=str(stepfile), OUT=str(out))
    script = f'echo {taken - 1} > /proc/sys/kernel/ns_last_pid; sleep 60 & "$PROBE" "$STEPS" "$OUT"; kill $!'
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script], check=True, timeout=60, env=env)
    return out.read_text().splitlines()


def test_a_thread_that_cannot_get_its_tid_fails_its_process_after_retries(probe, tmp_path):
    # 4243 is taken for good (and 4244 is the probe itself): each attempt's thread comes out as
    # 4245, the process is killed and started again, and after the last attempt the probe says so
    # and goes on (no step runs in a process whose tids the model would not print).
    lines = run_with_pid_taken(probe, tmp_path, 4243, """scenario r
proc 4242 qemu 4242 4243
proc 4300 other 4300
step 1 nosuch 4300 1
end
""")
    assert [line for line in lines if line.startswith("X ")] == (
        ["X tid 4243 wanted, got R 0 tid=4245"] * 5 + ["X process 4242: -98"])
    steps = split_steps(lines)
    assert steps[1].result == ["-38", "unknown=nosuch"]       # the next process started as asked
    assert lines[-1] == "Q"


def test_between_steps_the_pid_counter_waits_above_the_scenario_s_pids(probe, tmp_path):
    stepfile = tmp_path / "s.steps"
    stepfile.write_text("scenario p\npark 20000\nproc 4242 qemu 4242 4243\nstep 1 nosuch 4243 1\nend\n")
    out, after = tmp_path / "out.txt", tmp_path / "next-pid"
    env = dict(os.environ, XC_FIFO_DIR=str(tmp_path / "fifo"), PROBE=str(probe), STEPS=str(stepfile), OUT=str(out),
               AFTER=str(after))
    script = '"$PROBE" "$STEPS" "$OUT"; sh -c \'echo $$\' > "$AFTER"'
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script], check=True, timeout=60, env=env)
    lines = out.read_text().splitlines()
    assert not [line for line in lines if line.startswith("X ")]
    assert split_steps(lines)[1].result == ["-38", "unknown=nosuch"]
    assert after.read_text() == "20001\n"       # the next task the namespace made: above the park
