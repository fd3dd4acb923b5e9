"""`hugepfn lspci`: show a device's config space the way the real lspci decodes it.

    hugepfn lspci --profile gpu-1t -vv      # a profile, BARs assigned as firmware would
    hugepfn lspci --socket PATH -v          # a live `hugepfn serve`: what its client reads

The config space (a profile's device with its BARs assigned, or a served device's as its
client sees it now, BAR addresses included) is written as a sysfs tree in a temporary
directory, and pciutils' own lspci reads that tree.  -v, -vv, -vvv and -x, -xxx, -xxxx
are passed through: they mean what they mean to lspci (no -v: one line).
"""
from __future__ import annotations

import argparse
import tempfile

from hugepfn.device.sysfs_tree import lspci_path, run_lspci, write_config_tree, write_sysfs_tree


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("lspci", help="decode a profile's or a served device's config space with lspci",
                                   description=__doc__.splitlines()[0].split(": ", 1)[1])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--profile", default=None,
                      help="profile name (fixtures/profiles/NAME.toml) or path (default: gpu-8g)")
    what.add_argument("--socket", metavar="PATH",
                      help="the vfio-user socket of a running `hugepfn serve` (asked over PATH.ctl)")
    parser.add_argument("-v", dest="verbosity", action="count", default=0,
                        help="verbose, as lspci: -v, -vv (very), -vvv (everything)")
    parser.add_argument("-x", dest="hexdump", action="count", default=0,
                        help="hex dump of config space, as lspci (-x 64 B, -xxx 256 B, -xxxx 4 KiB)")
    parser.set_defaults(func=run)


def lspci_flags(verbosity: int, hexdump: int) -> list[str]:
    flags = ["-" + "v" * min(verbosity, 3)] if verbosity else []
    if hexdump:
        flags.append("-" + "x" * min(hexdump, 4))
    return flags


def _served_tree(socket: str, root: str) -> None:
    from hugepfn.device.control import CONTROL_SUFFIX, ControlClient, control_path

    path = socket if socket.endswith(CONTROL_SUFFIX) else control_path(socket)
    with ControlClient(path) as client:
        reply = client.config()
    write_config_tree(bytes.fromhex(reply["config"]), reply["resource"], root)


def run(args: argparse.Namespace) -> int:
    if lspci_path() is None:
        raise FileNotFoundError("lspci not found: install pciutils (apt-get install pciutils)")
    flags = lspci_flags(args.verbosity, args.hexdump)
    with tempfile.TemporaryDirectory(prefix="hugepfn-lspci-") as root:
        if args.socket:
            _served_tree(args.socket, root)
        else:
            from hugepfn.device.gpu import GpuDevice

            with GpuDevice.from_profile(args.profile or "gpu-8g") as device:
                write_sysfs_tree(device, root)
        print(run_lspci(root, *flags), end="")
    return 0
