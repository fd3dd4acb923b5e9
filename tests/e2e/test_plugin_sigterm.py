"""SIGTERM to a pytest run that uses the plugin cleans up as Ctrl-C does: the served
device's server is closed, its socket and the short socket directory are removed."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hugepfn.device.vfio_user import backends

SUITE = '''
import os, time

def test_serves_until_stopped(hugepfn_served_device):
    served = hugepfn_served_device("tiny", backend=os.environ["BACKEND"])
    with open(os.environ["REPORT"], "w") as fh:
        fh.write(str(served.socket_path))
    time.sleep(120)
'''


def _case(backend, xdist, signum):
    choice = backends.available_backends()[backend]
    marks = () if choice.available else (pytest.mark.skip(reason=choice.reason),)
    return pytest.param(backend, xdist, signum, marks=marks,
                        id=f"{signal.Signals(signum).name}-{'xdist' if xdist else 'serial'}-{backend}")


# SIGTERM on every backend, under xdist once (its workers get it from the controller);
# SIGINT, which always cleaned up, as the reference.
CASES = [_case("python", False, signal.SIGTERM), _case("libvfio-user", False, signal.SIGTERM),
         _case("python", True, signal.SIGTERM), _case("python", False, signal.SIGINT)]


@pytest.mark.parametrize("backend,xdist,signum", CASES)
def test_a_signal_stops_the_run_and_nothing_is_left(tmp_path, backend, xdist, signum):
    (tmp_path / "test_suite.py").write_text(SUITE)
    report = tmp_path / "socket.txt"
    # a base temp so long that the plugin has to put the sockets in a short /tmp directory
    basetemp = tmp_path / ("b" * 90)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
            str(tmp_path / "test_suite.py")] + (["-n", "1"] if xdist else [])
    env = dict(os.environ, BACKEND=backend, REPORT=str(report))
    # SIGINT is ignored in children of a non-interactive shell: give the run the default
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not report.exists() or not report.read_text():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the suite never served its device"
            time.sleep(0.05)
        sock = Path(report.read_text())
        assert sock.is_socket() and sock.parent.name.startswith("hpfn-")
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out                     # pytest's "interrupted"
    assert "Traceback" not in out
    assert not sock.exists() and not Path(str(sock) + ".ctl").exists()
    assert not sock.parent.exists(), f"{sock.parent} left behind"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        probe.connect(str(sock))                         # and nobody serves it any more
    probe.close()


def test_a_forked_copy_of_the_run_still_dies_of_sigterm():
    # pyroute2 (network namespaces) forks the pytest process; such a copy must end on
    # SIGTERM, not run pytest's teardown (a second summary, and a hang on copied locks).
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(30)
        finally:
            os._exit(0)                      # reached only if SIGTERM was turned into an exception
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
