"""`hugepfn serve` as a vfio-user backend program: --socket-path / --fd / --print-capabilities,
what it prints for QEMU users, client attach/detach, restored poison, readiness (--ready-fd,
NOTIFY_SOCKET), and one-line errors that name limits.  Real processes, sockets and fds."""
from __future__ import annotations

import json
import os
import socket
import sys
import uuid

import pytest

from hugepfn.device.control import ControlClient, control_path
from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient, VfioUserError

from .helpers import still_answers
from .serve_process import ServeProcess

LIBVFIO_USER = backends.available_backends()["libvfio-user"]


def listening_socket(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    return sock


def qemu_lines(path) -> list[str]:
    return [f'hugepfn serve: QEMU: -device \'{{"driver":"vfio-user-pci","socket":{{"path":"{path}","type":"unix"}}}}\'',
            "hugepfn serve: QEMU: guest RAM the device can reach: -object memory-backend-memfd,id=mem,size=RAM,"
            "share=on -machine memory-backend=mem (RAM: the guest's -m)"]


# -- --socket-path -------------------------------------------------------------------------------
def test_socket_path_equals_form_serves_and_prints_what_qemu_needs(backend, socket_path):
    serve = ServeProcess(f"--socket-path={socket_path}", "--profile", "gpu-8g", "--backend", backend)
    try:
        serve.wait_for("QEMU: guest RAM")
        with VfioUserClient.attach(socket_path) as client:
            still_answers(client)
            assert client.regions[2].size == 8 << 30
    finally:
        status = serve.stop()
    assert status == 0, serve.err
    assert serve.out == [
        serve.out[0],
        f"hugepfn serve: profile gpu-8g on {socket_path} (Ctrl-C or SIGTERM to stop)",
        f"hugepfn serve: control socket {socket_path}.ctl (hugepfn inject / status)",
        *qemu_lines(socket_path),
        "hugepfn serve: stopped"]
    assert serve.out[0].startswith(f"hugepfn serve: backend {backend}: requested: {backend} (")
    assert not socket_path.exists()


@pytest.mark.parametrize("backend, attached, gone", [
    ("python", "hugepfn serve: vfio-user: client negotiated 0.0 caps=",
     "hugepfn serve: vfio-user: client gone: peer closed the connection"),
    pytest.param("libvfio-user", "hugepfn serve: vfio-user: client attached on {path} (libvfio-user negotiated the version)",
                 "hugepfn serve: vfio-user: client gone: disconnected from {path}",
                 marks=pytest.mark.skipif(not LIBVFIO_USER.available, reason=LIBVFIO_USER.reason)),
])
def test_client_attach_and_detach_are_printed_at_default_verbosity(backend, attached, gone, socket_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", backend)
    try:
        serve.wait_for("QEMU: guest RAM")
        for _ in range(2):           # two clients, one after the other: two attach/detach pairs
            with VfioUserClient.attach(socket_path):
                serve.wait_for(attached.format(path=socket_path), "err")
            serve.wait_for(gone.format(path=socket_path), "err")
            del serve.err[:]
    finally:
        assert serve.stop() == 0


def test_one_failed_command_is_logged_once(socket_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python", "-v")
    try:
        serve.wait_for("QEMU: guest RAM")
        with VfioUserClient.attach(socket_path) as client:
            with pytest.raises(VfioUserError):
                client.region_read(2, 1 << 40, 4)
        serve.wait_for("client gone", "err")
    finally:
        assert serve.stop() == 0
    about = [line for line in serve.err if "0x10000000000+0x4" in line]
    assert about == ["hugepfn serve: vfio-user: REGION_READ -> EINVAL: REGION_READ: 0x10000000000+0x4 outside "
                     "region 2 of 0x4000000 bytes"]


def test_a_big_bar_gets_the_phys_bits_line(socket_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "gpu-1t", "--backend", "python")
    try:
        line = serve.wait_for("QEMU: BAR2")
    finally:
        assert serve.stop() == 0
    assert line == ("hugepfn serve: QEMU: BAR2 is 1TiB: -cpu max,phys-bits=41 (or more) so that firmware can "
                    "place it; under KVM no more than the host's (\"address sizes\" in /proc/cpuinfo)")


def test_poison_restored_from_the_state_directory_is_printed(socket_path, tmp_path):
    state = tmp_path / "state"
    first = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python",
                         "--state-dir", str(state))
    try:
        assert first.wait_for("state directory") == \
            f"hugepfn serve: state directory {state}: no poison recorded in {state}/poison.bin"
        with ControlClient(control_path(socket_path)) as control:
            control.inject(bar=2, offset=0x3123, granularity="4K")
            control.inject(bar=2, offset=0x200000, granularity="2M")
    finally:
        assert first.stop() == 0
    again = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python",
                         "--state-dir", str(state))
    try:
        line = again.wait_for("poison restored")
    finally:
        assert again.stop() == 0
    assert line == (f"hugepfn serve: poison restored from {state}/poison.bin: 2 range(s): "
                    "BAR2 offset 0x3000 4KiB, BAR2 offset 0x200000 2MiB")


# -- --fd ----------------------------------------------------------------------------------------
def test_fd_serves_a_socket_passed_by_a_manager_and_leaves_its_file(socket_path):
    manager = listening_socket(socket_path)
    fd = manager.fileno()
    serve = ServeProcess(f"--fd={fd}", "--profile", "tiny", pass_fds=(fd,))
    try:
        serve.wait_for("QEMU: guest RAM")
        with VfioUserClient.attach(socket_path) as client:
            still_answers(client)
        with ControlClient(control_path(socket_path)) as control:    # the control socket is there too
            assert control.status()["backend"] == "python"
    finally:
        status = serve.stop()
    assert status == 0, serve.err
    assert serve.out[:4] == [
        "hugepfn serve: backend python: auto: python for --fd (libvfio-user binds its socket from a path "
        "(vfu_create_ctx) and cannot serve a passed fd)",
        f"hugepfn serve: profile tiny on fd {fd} ({socket_path}) (Ctrl-C or SIGTERM to stop)",
        f"hugepfn serve: control socket {socket_path}.ctl (hugepfn inject / status)",
        qemu_lines(socket_path)[0]]
    assert socket_path.is_socket(), "the manager's socket file is the manager's to remove"
    manager.close()


def test_fd_of_an_abstract_socket_prints_an_abstract_address():
    name = f"hugepfn-test-{uuid.uuid4().hex}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    manager.bind("\0" + name)
    manager.listen(1)
    serve = ServeProcess("--fd", str(manager.fileno()), "--profile", "tiny", pass_fds=(manager.fileno(),))
    try:
        device_line = serve.wait_for("QEMU: -device")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect("\0" + name)                # reaches the server: it accepts
        client.close()
    finally:
        assert serve.stop() == 0
    assert device_line == ('hugepfn serve: QEMU: -device \'{"driver":"vfio-user-pci","socket":{"path":"'
                           + name + '","type":"unix","abstract":true}}\'')
    assert "hugepfn serve: no control socket: the passed socket has no path (hugepfn inject / status cannot " \
           "reach it)" in serve.out
    manager.close()


def _passed_fd_error(fd: int, *extra: str, pass_fds=()) -> str:
    serve = ServeProcess("--fd", str(fd), "--profile", "tiny", *extra, pass_fds=pass_fds)
    status = serve.finish()
    assert status == 2 and serve.out == [] and len(serve.err) == 1, (serve.out, serve.err)
    return serve.err[0]


def test_fd_that_is_not_a_listening_unix_stream_socket_is_one_line(tmp_path):
    assert _passed_fd_error(57) == "hugepfn serve: error: --fd 57: not an open file descriptor (Bad file descriptor)"
    r, w = os.pipe()
    try:
        assert _passed_fd_error(r, pass_fds=(r,)) == f"hugepfn serve: error: --fd {r}: not a socket"
    finally:
        os.close(r), os.close(w)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound:
        assert _passed_fd_error(unbound.fileno(), pass_fds=(unbound.fileno(),)) == \
            f"hugepfn serve: error: --fd {unbound.fileno()}: the socket is not listening (the manager must " \
            "bind() and listen())"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        assert _passed_fd_error(dgram.fileno(), pass_fds=(dgram.fileno(),)) == \
            f"hugepfn serve: error: --fd {dgram.fileno()}: a AF_UNIX SOCK_DGRAM socket; vfio-user needs an " \
            "AF_UNIX SOCK_STREAM socket"


@pytest.mark.skipif(not LIBVFIO_USER.available, reason=LIBVFIO_USER.reason)
def test_fd_with_libvfio_user_is_refused_with_the_reason(socket_path):
    with listening_socket(socket_path) as manager:
        assert _passed_fd_error(manager.fileno(), "--backend", "libvfio-user", pass_fds=(manager.fileno(),)) == \
            "hugepfn serve: error: --fd: libvfio-user binds its socket from a path (vfu_create_ctx) and cannot " \
            "serve a passed fd; use --backend python or --socket-path"


def test_socket_path_and_fd_exclude_each_other_and_one_is_needed(socket_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--fd", "3")
    assert serve.finish() == 2
    assert serve.err[-1] == "hugepfn serve: error: argument --fd: not allowed with argument --socket-path"
    serve = ServeProcess("--profile", "tiny")
    assert serve.finish() == 2
    assert serve.err == ["hugepfn serve: error: give --socket-path=PATH (or --socket PATH) or --fd=FDNUM"]


def test_too_long_socket_path_names_the_limit_and_the_length(tmp_path):
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    deep.mkdir(mode=0o700)
    path = deep / "gpu.sock"
    serve = ServeProcess("--socket-path", str(path), "--profile", "tiny", "--backend", "python")
    assert serve.finish() == 2
    assert serve.err == [f"hugepfn serve: error: socket path is {len(str(path))} bytes; an AF_UNIX address holds "
                         f"at most 107 (sun_path is 108 bytes with its NUL), so a client could not connect: {path}"]


# -- --print-capabilities and the backend program ------------------------------------------------
def test_print_capabilities_is_json_and_needs_no_socket():
    serve = ServeProcess("--print-capabilities")
    assert serve.finish() == 0 and serve.err == []
    caps = json.loads("\n".join(serve.out))
    assert caps == {"type": "gpu", "features": ["profile", "backend", "state-dir", "ready-fd", "notify-socket",
                                                 "idle-limit", "recv-timeout"],
                    "profiles": ["gpu-1t", "gpu-8g", "nvgrace", "rebar", "tiny"],
                    "backends": {"libvfio-user": LIBVFIO_USER.available, "python": True}}


def test_the_backend_program_serves_like_hugepfn_serve(socket_path):
    program = os.path.join(os.path.dirname(sys.executable), "hugepfn-vfio-user")
    serve = ServeProcess(f"--socket-path={socket_path}", "--profile", "tiny", "--backend", "python",
                         program=[program])
    try:
        serve.wait_for("QEMU: guest RAM")
        with VfioUserClient.attach(socket_path) as client:
            still_answers(client)
    finally:
        assert serve.stop() == 0
    assert serve.out[-1] == "hugepfn serve: stopped"


# -- readiness -----------------------------------------------------------------------------------
def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_ready_fd_says_ready_once_clients_can_connect_then_closes(socket_path):
    r, w = os.pipe()
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python",
                         "--ready-fd", str(w), pass_fds=(w,))
    os.close(w)
    try:
        assert _read_all(r) == b"READY=1\n"         # then EOF: the server closed its end
        with VfioUserClient.attach(socket_path) as client:    # no polling: READY means listening
            still_answers(client)
        with ControlClient(control_path(socket_path)) as control:
            assert control.status()["profile"] == "tiny"
    finally:
        os.close(r)
        assert serve.stop() == 0


def test_ready_fd_reads_end_of_file_when_serve_fails(tmp_path):
    r, w = os.pipe()
    serve = ServeProcess("--socket-path", str(tmp_path / "s.sock"), "--profile", "no-such-profile",
                         "--ready-fd", str(w), pass_fds=(w,))
    os.close(w)
    try:
        assert _read_all(r) == b""
    finally:
        os.close(r)
    assert serve.finish() == 2
    assert serve.err[0].startswith("hugepfn serve: error: profile 'no-such-profile'")


def test_ready_fd_that_is_not_open_is_refused_before_serving(socket_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--ready-fd", "63")
    assert serve.finish() == 2
    assert serve.err == ["hugepfn serve: error: --ready-fd 63: not an open file descriptor (Bad file descriptor)"]
    assert not socket_path.exists()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_notify_ready_and_stopping(socket_path, tmp_path, abstract):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"hugepfn-notify-{uuid.uuid4().hex}"
        notify.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify")
        notify.bind(address)
    notify.settimeout(30)
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python",
                         env={"NOTIFY_SOCKET": address})
    try:
        assert notify.recv(4096) == f"READY=1\nSTATUS=serving tiny on {socket_path}".encode()
        with VfioUserClient.attach(socket_path) as client:
            still_answers(client)
    finally:
        assert serve.stop() == 0
    assert notify.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notify.close()


def test_notify_socket_that_cannot_be_reached_is_one_line(socket_path, tmp_path):
    serve = ServeProcess("--socket-path", str(socket_path), "--profile", "tiny", "--backend", "python",
                         env={"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert serve.finish() == 1
    assert serve.err == [f"hugepfn serve: error: NOTIFY_SOCKET: cannot send to it (No such file or directory): "
                         f"{tmp_path / 'nobody'}"]
    assert not socket_path.exists()
