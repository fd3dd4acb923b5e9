"""The socket: 0600 file, one client at a time, disconnect drops DMA/IRQ state, reconnect works."""
from __future__ import annotations

import errno
import os
import socket
import stat

import pytest

from hugepfn.abi.vfio import VFIO_PCI_MSIX_IRQ_INDEX
from hugepfn.device.vfio_user import backends
from hugepfn.device.vfio_user.transport import listen_unix
from hugepfn.host.vfio_user import VfioUserClient, VfioUserProtocolError

from .helpers import QEMU_CAPS, attach_after_hangup, memfd, still_answers, wait_irq
from .test_dma_map import GIB, device_dma


def test_socket_file_is_mode_0600(server, socket_path):
    mode = os.stat(socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_second_concurrent_client_is_refused_and_the_first_keeps_working(client, socket_path, facts):
    second = VfioUserClient.connect(socket_path, timeout=5)
    with pytest.raises(VfioUserProtocolError):
        second.negotiate(QEMU_CAPS)
    second.close()
    still_answers(client)
    assert client.region_read(facts.regs, facts.ident, 4) == facts.ids.to_bytes(4, "little")


def test_disconnect_drops_dma_and_irqs_keeps_device_state_and_accepts_next_client(
        server, socket_path, device, facts, backend):
    first = VfioUserClient.attach(socket_path)
    [efd] = first.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1)
    watch = os.dup(efd)
    os.set_blocking(watch, False)
    guest = memfd(1 << 20)
    first.dma_map(GIB, 1 << 20, guest)
    facts.enable_msix(first)
    [area] = first.map_region(facts.mem)
    area.mapping[0:12] = b"kept in BAR2"
    first.region_write(facts.regs, facts.scratch, b"scratch!")
    first.close()

    second = attach_after_hangup(socket_path, backend)
    # device state kept
    assert second.region_read(facts.mem, area.offset, 12) == b"kept in BAR2"
    assert second.region_read(facts.regs, facts.scratch, 8) == b"scratch!"
    assert device.msix_enabled
    # DMA state dropped: the old window is gone
    read, _ = device_dma(server, backend)
    with pytest.raises(OSError):
        read(GIB, 8)
    # IRQ state dropped: the device raising the vector no longer signals the old eventfd
    facts.ring(second, 0)
    second.get_device_info()
    with pytest.raises(BlockingIOError):
        os.read(watch, 8)
    # and the new client's own wiring works
    second.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1)
    facts.ring(second, 0)
    assert wait_irq(second, VFIO_PCI_MSIX_IRQ_INDEX, 0) == 1
    second.close()
    os.close(watch)
    os.close(guest)


def test_twenty_quick_reconnects(server, socket_path, backend, facts):
    for n in range(20):
        with attach_after_hangup(socket_path, backend) as c:
            c.region_write(facts.regs, facts.scratch, n.to_bytes(4, "little"))
    with attach_after_hangup(socket_path, backend) as c:
        assert c.region_read(facts.regs, facts.scratch, 4) == (19).to_bytes(4, "little")


def test_client_vanishing_mid_message_does_not_wedge_the_server(server, socket_path, backend):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    sock.sendall(b"\x00\x00\x01\x00\x40\x00\x00\x00")       # half a header
    sock.close()
    with attach_after_hangup(socket_path, backend) as c:
        still_answers(c)


def test_python_listener_refuses_a_directory_owned_by_someone_else(tmp_path):
    other = tmp_path / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, os.geteuid() + 1, -1) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    with pytest.raises(PermissionError, match="owned by uid"):
        listen_unix(other / "s.sock")


def test_python_listener_replaces_a_stale_socket_but_not_a_live_one(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()                                   # file left behind, nobody listening
    live = listen_unix(path)
    with pytest.raises(OSError) as exc:
        listen_unix(path)
    assert exc.value.errno == errno.EADDRINUSE
    live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        listen_unix(path)


def test_long_socket_paths_work(tmp_path, device):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    path = deep / "vfio-user.sock"
    assert len(str(path)) > 108
    choice, _ = backends.select_backend("python")
    with choice.Server(device, path):
        with VfioUserClient.attach(path) as c:
            still_answers(c)


def test_serve_forever_stops_on_sigterm_and_removes_the_socket(tmp_path, backend):
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "s.sock"
    code = ("import sys\n"
            "from hugepfn.device.gpu import GpuDevice\n"
            "from hugepfn.device.vfio_user import backends\n"
            "choice, _ = backends.select_backend(sys.argv[2])\n"
            "server = choice.Server(GpuDevice.from_profile('tiny'), sys.argv[1])\n"
            "server.serve_forever()\n"
            "print('returned')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), backend],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    with VfioUserClient.attach(path) as c:
        still_answers(c)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, out) == (0, "returned\n"), err
    assert not path.exists()


def test_python_server_status_reports_client_dma_and_irqs(tmp_path, device):
    choice, _ = backends.select_backend("python")
    path = tmp_path / "s.sock"
    with choice.Server(device, path) as srv:
        assert srv.status()["attached"] is False
        with VfioUserClient.attach(path) as c:
            guest = memfd(0x10000)
            c.dma_map(GIB, 0x10000, guest)
            c.dma_map(2 * GIB, 0x1000)
            c.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 2)
            status = srv.status()
            assert status["attached"] and status["clients_served"] == 1
            assert status["dma_windows"] == [(GIB, 0x10000, True), (2 * GIB, 0x1000, False)]
            assert status["irq_eventfds"] == [(VFIO_PCI_MSIX_IRQ_INDEX, 0), (VFIO_PCI_MSIX_IRQ_INDEX, 1)]
            assert status["client_capabilities"]["max_msg_fds"] == 16
            os.close(guest)
        c2 = attach_after_hangup(path, "python")
        assert srv.status()["dma_windows"] == [] and srv.status()["clients_served"] == 2
        c2.close()
