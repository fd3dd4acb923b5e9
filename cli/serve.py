"""`hugepfn serve`: serve an emulated GPU over vfio-user until SIGTERM/SIGINT.

    hugepfn serve --profile gpu-8g --socket-path=/run/user/1000/hugepfn/gpu0.sock
    hugepfn serve --profile gpu-1t --fd=3          # a listening socket passed by a manager
    hugepfn-vfio-user --socket-path=PATH ...       # the same, as a vfio-user backend program

It follows the vfio-user backend program conventions (QEMU's docs/interop/vfio-user.rst,
"Backend Program Conventions", which build on vhost-user's): it never daemonizes, uses
stdin/stdout/stderr as such, ends cleanly on SIGTERM, takes ``--socket-path=PATH`` or
``--fd=FDNUM`` (one of them), and ``--print-capabilities`` prints what it supports as JSON
and exits.  ``hugepfn backend-json`` writes the description management tools look for.

At its default verbosity it says which backend it picked and why, what QEMU needs to
attach (the ``-device`` line, shared guest RAM, physical address bits for big BARs), the
poison it restored from ``--state-dir``, and each client's attach and detach.  Scripts
wait for readiness with ``--ready-fd N`` or, under systemd, NOTIFY_SOCKET (readiness.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from hugepfn.device.vfio_user.backends import CHOICES, BackendUnavailable, available_backends, select_backend
from hugepfn.device.vfio_user.limits import ConnectionLimits
from hugepfn.device.vfio_user.transport import _SUN_PATH_MAX

from .readiness import Readiness

PROG = "hugepfn serve"
# The optional command-line options, as --print-capabilities lists them (vhost-user style).
FEATURES = ("profile", "backend", "state-dir", "ready-fd", "notify-socket", "idle-limit", "recv-timeout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket-path", metavar="PATH", dest="socket_path",
                       help="UNIX socket to create and listen on (mode 0600, in a directory you own)")
    where.add_argument("--socket", metavar="PATH", dest="socket_path",
                       help="the same as --socket-path")
    where.add_argument("--fd", type=int, metavar="FDNUM",
                       help="serve this already listening AF_UNIX socket (passed by a manager)")
    parser.add_argument("--profile", default="gpu-8g",
                        help="device profile name (tiny, gpu-8g, nvgrace, gpu-1t, ...) or a TOML file "
                             "(default: gpu-8g)")
    parser.add_argument("--backend", choices=CHOICES, default="auto",
                        help="vfio-user implementation (default: auto = libvfio-user if found, else python)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the device keeps persistent state (the poison list); default: none")
    parser.add_argument("--ready-fd", type=int, metavar="N",
                        help="write READY=1 to fd N and close it once clients can connect")
    parser.add_argument("--idle-limit", type=float, metavar="SECONDS",
                        help="close a client that sends nothing for this long (default: never)")
    parser.add_argument("--recv-timeout", type=float, default=ConnectionLimits.recv_timeout, metavar="SECONDS",
                        help="close a client that leaves a message half sent for this long (default: %(default)g)")
    parser.add_argument("--print-capabilities", action="store_true",
                        help="print the backend's capabilities as JSON and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection event")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve an emulated device over vfio-user (QEMU vfio-user-pci, the host model)",
        description="Serve an emulated GPU on a vfio-user UNIX socket until SIGTERM or Ctrl-C.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def backend_main(argv: list[str] | None = None) -> int:
    """`hugepfn-vfio-user`: `hugepfn serve` as a program of its own, the `binary` that the
    backend description names (a management tool runs it with --socket-path or --fd)."""
    from .main import run_command

    parser = argparse.ArgumentParser(prog="hugepfn-vfio-user",
                                     description="vfio-user backend program: an emulated GPU with huge-pfnmap BARs.")
    add_arguments(parser)
    return run_command("serve", run, parser.parse_args(argv))


def capabilities() -> dict:
    """What --print-capabilities prints (vhost-user's VHostUserBackendCapabilities shape,
    plus what this host can serve now)."""
    from hugepfn.device.profiles import available_profiles

    return {"type": "gpu", "features": list(FEATURES), "profiles": available_profiles(),
            "backends": {name: choice.available for name, choice in available_backends().items()}}


def check_socket_path(path: str) -> None:
    """QEMU connects to the path as given: it must fit an AF_UNIX address."""
    length = len(os.fsencode(path))
    if length > _SUN_PATH_MAX:
        raise ValueError(f"socket path is {length} bytes; an AF_UNIX address holds at most {_SUN_PATH_MAX} "
                         f"(sun_path is 108 bytes with its NUL), so a client could not connect: {path}")


def _choose_backend(name: str, passed_socket: bool):
    if not passed_socket:
        return select_backend(name)
    # libvfio-user's vfu_create_ctx() binds a path itself: it cannot take a passed socket.
    reason = "libvfio-user binds its socket from a path (vfu_create_ctx) and cannot serve a passed fd"
    if name == "libvfio-user":
        raise BackendUnavailable(f"--fd: {reason}; use --backend python or --socket-path")
    choice, why = select_backend("python")
    return choice, (f"auto: python for --fd ({reason})" if name == "auto" else why)


def say(text: str) -> None:
    print(f"{PROG}: {text}", flush=True)


def run(args) -> int:
    if args.print_capabilities:
        print(json.dumps(capabilities(), indent=2))
        return 0
    if args.socket_path is None and args.fd is None:
        raise ValueError("give --socket-path=PATH (or --socket PATH) or --fd=FDNUM")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"{PROG}: %(message)s", stream=sys.stderr)
    limits = ConnectionLimits(recv_timeout=args.recv_timeout, idle_limit=args.idle_limit)   # ValueError: exit 2
    readiness = Readiness.from_environment(args.ready_fd)      # a bad fd or address: refused now
    listener = None
    if args.fd is not None:
        from hugepfn.device.vfio_user.passed_socket import adopt_listening_socket
        listener, address = adopt_listening_socket(args.fd)
    else:
        address = os.path.abspath(args.socket_path)
        check_socket_path(address)
    choice, why = _choose_backend(args.backend, listener is not None)   # BackendUnavailable: ValueError
    # Handlers first: a SIGTERM that arrives while the server is being set up (the
    # libvfio-user backend creates the socket file in its constructor) still stops
    # it cleanly instead of killing the process mid-way.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _serve(args, choice, why, listener, address, readiness, stop, limits)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _serve(args, choice, why, listener, address: str | None, readiness: Readiness,
           stop: threading.Event, limits: ConnectionLimits) -> None:
    from hugepfn.device.gpu import GpuDevice

    device = GpuDevice.from_profile(args.profile, state_dir=args.state_dir)
    try:
        if listener is not None:
            server = choice.Server(device, address or f"fd {args.fd}", listener=listener, limits=limits)
        else:
            server = choice.Server(device, address, limits=limits)
        control = None
        try:
            server.start()
            say(f"backend {choice.name}: {why}")
            where = address if listener is None else f"fd {args.fd} ({address or 'an unnamed socket'})"
            say(f"profile {device.profile.name} on {where} (Ctrl-C or SIGTERM to stop)")
            control = _start_control(device, server, address, passed=listener is not None)
            _say_restored_poison(device, args.state_dir)
            _say_qemu_options(device, address)
            readiness.ready(f"serving {device.profile.name} on {where}")
            while not stop.wait(1.0):
                pass
            readiness.stopping()
        finally:
            if control is not None:
                control.close()
            server.close()
        say("stopped")
    finally:
        device.close()


def _start_control(device, server, address: str | None, passed: bool):
    """The control socket (`hugepfn inject` / `status` / `lspci --socket`) next to the vfio-user one.
    A manager's socket may live where this process cannot create files: then go on without."""
    from hugepfn.device.control import ControlServer, control_path

    if address is None or address.startswith("@"):
        say("no control socket: the passed socket has no path (hugepfn inject / status cannot reach it)")
        return None
    try:
        control = ControlServer(device, control_path(address), server=server).start()
    except OSError as exc:
        if not passed:
            raise
        say(f"no control socket: {exc.strerror or exc}: {control_path(address)}")
        return None
    say(f"control socket {control.path} (hugepfn inject / status)")
    return control


def _say_restored_poison(device, state_dir: str | None) -> None:
    if state_dir is None:
        return
    from hugepfn.device.profiles import format_size

    ranges = list(device.poison)
    where = device.poison.store.path
    if not ranges:
        say(f"state directory {state_dir}: no poison recorded in {where}")
        return
    shown = ", ".join(f"BAR{r.bar} offset {r.offset:#x} {format_size(r.length)}" for r in ranges[:8])
    more = f", and {len(ranges) - 8} more (hugepfn status lists all)" if len(ranges) > 8 else ""
    say(f"poison restored from {where}: {len(ranges)} range(s): {shown}{more}")


def _say_qemu_options(device, address: str | None) -> None:
    from hugepfn.device import qemu_options
    from hugepfn.device.profiles import format_size

    if address is not None:
        say(f"QEMU: {qemu_options.device_argument(address)}")
    say(f"QEMU: guest RAM the device can reach: {qemu_options.MEMORY_BACKEND} (RAM: the guest's -m)")
    bits = qemu_options.phys_bits_needed(device.profile.bars)
    if bits > qemu_options.TCG_DEFAULT_PHYS_BITS:
        big = max((b for b in device.profile.bars if b.is_64bit), key=lambda b: b.size)
        say(f"QEMU: BAR{big.index} is {format_size(big.size)}: -cpu max,phys-bits={bits} (or more) so that "
            f"firmware can place it; under KVM no more than the host's (\"address sizes\" in /proc/cpuinfo)")
