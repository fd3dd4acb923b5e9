"""`hugepfn inject` and `hugepfn status` against a real `hugepfn serve` process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def hugepfn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.fixture
def served(tmp_path):
    """A `hugepfn serve --profile tiny --backend python` process; yields its socket path."""
    sock = tmp_path / "gpu.sock"
    proc = subprocess.Popen([sys.executable, "-m", "hugepfn.cli.main", "serve", "--profile", "tiny", "--socket",
                             str(sock), "--backend", "python"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    deadline = time.monotonic() + 20
    while not Path(f"{sock}.ctl").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"hugepfn serve did not start: {proc.communicate()}")
        time.sleep(0.05)
    yield sock
    proc.terminate()                     # our own child, by its pid
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"hugepfn serve: control socket {sock}.ctl (hugepfn inject / status)" in out
    assert not Path(f"{sock}.ctl").exists()


def test_inject_prints_what_was_poisoned(served):
    done = hugepfn("inject", "--socket", str(served), "--bar", "2", "--offset", "0x123456", "--granularity", "4K")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == ("poisoned BAR2 offset 0x123000 length 4KiB (dpa 0x123000, granularity 4KiB, "
                           "multi-ecc), error record #1\n")


def test_inject_json_and_dpa(served):
    done = hugepfn("inject", "--socket", f"{served}.ctl", "--dpa", "0x2040", "--granularity", "64", "--json",
                   "--error-type", "single-ecc")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"bar": 2, "offset": 0x2040, "length": 64, "dpa": 0x2040, "granularity": 64,
                                       "error_type": "single-ecc", "sequence": 1}


def test_status_text_and_json(served):
    hugepfn("inject", "--socket", str(served), "--bar", "2", "--offset", "0x10000", "--granularity", "8K")
    text = hugepfn("status", "--socket", str(served))
    assert text.returncode == 0
    assert text.stdout == (
        "profile tiny, backend python, client none (0 served so far)\n"
        "  vfio-user: 0 DMA window(s), 0 interrupt eventfd(s) wired, 0 client(s) refused\n"
        "  BAR0: registers 64KiB trapped\n"
        "  BAR2: memory 64MiB fd, memory 64MiB at dpa 0x0\n"
        "  BAR4: msix 16KiB trapped\n"
        "poisoned: 1 range(s), 2 page(s)\n"
        "  BAR2 offset 0x10000 length 8KiB dpa 0x10000\n"
        "error queue: 1 of 16 record(s) waiting, 0 lost, last record #1\n")
    js = json.loads(hugepfn("status", "--socket", str(served), "--json").stdout)
    assert (js["backend"], js["attached"], js["poisoned_pages"], js["error_queue"]["count"]) == ("python", False, 2, 1)


@pytest.mark.parametrize("args,message,status", [
    (["--bar", "3", "--offset", "0"], "hugepfn inject: error: BAR 3 is not a memory BAR (memory BARs: 2)", 2),
    (["--bar", "2"], "hugepfn inject: error: --bar needs --offset", 2),
    (["--dpa", "0x1000", "--offset", "0"], "hugepfn inject: error: --offset goes with --bar, not with --dpa", 2),
    (["--bar", "2", "--offset", "0", "--granularity", "3K"],
     "hugepfn inject: error: granularity 0xc00 must be a power of two from 64 B to 1 GiB", 2),
    (["--bar", "2", "--offset", "banana"],
     "hugepfn inject: error: offset: expected a size such as 4K, 0x1000, 8GiB or 1_000, got 'banana'", 2),
])
def test_inject_errors_are_one_line(served, args, message, status):
    done = hugepfn("inject", "--socket", str(served), *args)
    assert (done.returncode, done.stdout, done.stderr) == (status, "", message + "\n")


def test_no_server_is_one_line_with_status_1(tmp_path):
    for command in (["inject", "--bar", "2", "--offset", "0"], ["status"]):
        done = hugepfn(command[0], "--socket", str(tmp_path / "gone.sock"), *command[1:])
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == (f"hugepfn {command[0]}: error: cannot connect to the control socket (No such file "
                               f"or directory); is `hugepfn serve` running?: {tmp_path / 'gone.sock'}.ctl\n")
