"""Both backends' servers are one thing to the rest of hugepfn (VfioUserBackend): the device's
status through its control socket reads them alike, without asking which one it has."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from hugepfn.device.control import device_status
from hugepfn.device.vfio_user.backends import VfioUserBackend
from hugepfn.device.vfio_user.server_loop import ServerLoop
from hugepfn.host.vfio_user import VfioUserClient


COMMON = {"backend", "socket", "attached", "clients_served", "clients_refused", "clients_dropped", "dma_windows"}
REPO = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_each_backend_is_a_vfio_user_backend_with_the_common_status(server, backend, device, socket_path):
    assert isinstance(server, VfioUserBackend) and isinstance(server, ServerLoop)
    assert server.backend_name == backend
    before = server.status()
    assert COMMON <= set(before)
    assert (before["backend"], str(before["socket"]), before["attached"], before["clients_served"]) == \
        (backend, str(socket_path), False, 0)
    with VfioUserClient.attach(socket_path) as client:
        client.dma_map(0x1_0000_0000, 1 << 20)
        assert wait_for(lambda: server.attached and server.status()["dma_windows"] != [])
        now = server.status()
        assert (now["attached"], now["clients_served"], now["dma_windows"]) == \
            (True, 1, [(0x1_0000_0000, 1 << 20, False)])
        status = device_status(device, server)
        assert (status["backend"], status["attached"], status["clients_served"]) == (backend, True, 1)
        assert status["vfio_user"]["dma_windows"] == [(0x1_0000_0000, 1 << 20, False)]
    assert wait_for(lambda: not server.attached)


def test_call_in_owner_runs_in_the_serving_thread(server):
    assert server.call_in_owner(threading.get_ident) == server._thread.ident


def test_control_asks_the_backend_and_never_guesses():
    out = subprocess.run(["grep", "-nE", r"\b(getattr|hasattr)\(", "device/control.py", "device/serving.py"],
                         cwd=REPO, capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (1, "")
