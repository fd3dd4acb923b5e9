"""`hugepfn serve` in a real process: says which backend, serves, stops on SIGTERM."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient

from .helpers import still_answers


def _serve(*args):
    return subprocess.Popen([sys.executable, "-m", "hugepfn.cli.main", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "server socket never appeared"
        time.sleep(0.05)


def test_serve_says_which_backend_serves_gpu8g_and_stops_on_sigterm(backend, socket_path):
    proc = _serve("--profile", "gpu-8g", "--socket", str(socket_path), "--backend", backend)
    try:
        _wait_for(socket_path, proc)
        with VfioUserClient.attach(socket_path) as client:
            still_answers(client)
            bar2 = client.regions[2]
            assert bar2.size == 8 << 30 and bar2.fd is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"hugepfn serve: backend {backend}: requested: {backend} (")
    assert lines[-1] == "hugepfn serve: stopped"
    assert not socket_path.exists()


def test_auto_prefers_libvfio_user_when_available(socket_path):
    expected = "libvfio-user" if backends.available_backends()["libvfio-user"].available else "python"
    proc = _serve("--profile", "tiny", "--socket", str(socket_path))
    try:
        _wait_for(socket_path, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert out.splitlines()[0].startswith(f"hugepfn serve: backend {expected}: auto: {expected} (")


def _one_line_error(*args) -> str:
    proc = _serve(*args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (1, 2)
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_unknown_profile_is_a_one_line_error(tmp_path):
    err = _one_line_error("--profile", "no-such-profile", "--socket", str(tmp_path / "s.sock"),
                          "--backend", "python")
    assert err.startswith("hugepfn serve: error: profile 'no-such-profile'")


def test_missing_socket_directory_is_a_one_line_error(tmp_path):
    err = _one_line_error("--profile", "tiny", "--socket", str(tmp_path / "missing" / "s.sock"),
                          "--backend", "python")
    assert err == f"hugepfn serve: error: socket directory does not exist: {tmp_path / 'missing'}"


def test_idle_limit_closes_a_quiet_client_and_says_why(backend, socket_path):
    import select
    proc = _serve("--profile", "tiny", "--socket", str(socket_path), "--backend", backend, "--idle-limit", "0.5")
    try:
        _wait_for(socket_path, proc)
        with VfioUserClient.attach(socket_path) as client:
            poller = select.poll()
            poller.register(client.sock, select.POLLRDHUP)
            assert poller.poll(5000), "the idle client was not closed"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"hugepfn serve: vfio-user: closed the client on {socket_path}: idle for 0.5 s (idle limit)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (("--idle-limit", "0"), "hugepfn serve: error: idle-limit must be a positive number of seconds"),
    (("--recv-timeout", "-2"), "hugepfn serve: error: recv-timeout must be a positive number of seconds"),
])
def test_bad_limits_are_a_one_line_error(tmp_path, args, message):
    assert _one_line_error("--profile", "tiny", "--socket", str(tmp_path / "s.sock"), "--backend", "python",
                           *args) == message
