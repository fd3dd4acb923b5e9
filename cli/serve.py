"""`hugepfn serve`: serve an emulated GPU over vfio-user until SIGTERM/SIGINT.

    hugepfn serve --profile gpu-8g --socket /run/user/1000/gpu0.sock [--backend auto]

It says which backend it picked and why (auto prefers libvfio-user when the
library is on the machine, else the project's own Python engine).  A client such
as QEMU's vfio-user-pci then attaches to the socket (see docs/qemu.md).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from hugepfn.device.vfio_user.backends import CHOICES, select_backend
from hugepfn.device.vfio_user.limits import ConnectionLimits


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve an emulated device over vfio-user (QEMU vfio-user-pci, the host model)",
        description="Serve an emulated GPU on a vfio-user UNIX socket until SIGTERM or Ctrl-C. "
                    "The socket file is created with mode 0600 in a directory you own.")
    parser.add_argument("--profile", default="gpu-8g",
                        help="device profile name (tiny, gpu-8g, nvgrace, ...) or a TOML file (default: gpu-8g)")
    parser.add_argument("--socket", required=True, metavar="PATH", help="UNIX socket path to listen on")
    parser.add_argument("--backend", choices=CHOICES, default="auto",
                        help="vfio-user implementation (default: auto = libvfio-user if found, else python)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the device keeps persistent state (the poison list); default: none")
    parser.add_argument("--idle-limit", type=float, metavar="SECONDS",
                        help="close a client that sends nothing for this long (default: never)")
    parser.add_argument("--recv-timeout", type=float, default=ConnectionLimits.recv_timeout, metavar="SECONDS",
                        help="close a client that leaves a message half sent for this long (default: %(default)g)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection event")
    parser.set_defaults(func=run)


def run(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="hugepfn serve: %(message)s", stream=sys.stderr)
    limits = ConnectionLimits(recv_timeout=args.recv_timeout, idle_limit=args.idle_limit)   # ValueError: exit 2
    choice, why = select_backend(args.backend)           # BackendUnavailable is a ValueError
    # Handlers first: a SIGTERM that arrives while the server is being set up (the
    # libvfio-user backend creates the socket file in its constructor) still stops
    # it cleanly instead of killing the process mid-way.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _serve(args, choice, why, stop, limits)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _serve(args, choice, why, stop: threading.Event, limits: ConnectionLimits) -> None:
    from hugepfn.device.gpu import GpuDevice

    device = GpuDevice.from_profile(args.profile, state_dir=args.state_dir)
    try:
        server = choice.Server(device, args.socket, limits=limits)
        control = None
        try:
            server.start()
            # `hugepfn inject` / `hugepfn status` talk to the device on SOCKET.ctl
            from hugepfn.device.control import ControlServer, control_path
            control = ControlServer(device, control_path(args.socket), server=server).start()
            print(f"hugepfn serve: backend {choice.name}: {why}", flush=True)
            print(f"hugepfn serve: profile {device.profile.name} on {args.socket} "
                  f"(Ctrl-C or SIGTERM to stop)", flush=True)
            print(f"hugepfn serve: control socket {control.path} (hugepfn inject / status)", flush=True)
            while not stop.wait(1.0):
                pass
        finally:
            if control is not None:
                control.close()
            server.close()
        print("hugepfn serve: stopped", flush=True)
    finally:
        device.close()
