"""`hugepfn lspci`: show a device profile's config space the way the real lspci decodes it.

The profile's device is built, its BARs assigned, and its config space written as a
sysfs tree in a temporary directory; then pciutils' own lspci reads that tree.
"""
from __future__ import annotations

import argparse
import tempfile

from hugepfn.device.gpu import GpuDevice
from hugepfn.device.sysfs_tree import lspci_path, run_lspci, write_sysfs_tree


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("lspci", help="decode a device profile's config space with lspci",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu-8g",
                        help="profile name (fixtures/profiles/NAME.toml) or path (default: gpu-8g)")
    parser.add_argument("-v", dest="verbosity", action="count", default=0,
                        help="more detail, as lspci -v/-vv/-vvv (default -vvv)")
    parser.add_argument("-x", dest="hexdump", action="count", default=0,
                        help="hex dump of config space (-x 64 B, -xxx 256 B, -xxxx 4 KiB)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if lspci_path() is None:
        raise FileNotFoundError("lspci not found: install pciutils (apt-get install pciutils)")
    flags = ["-" + "v" * (args.verbosity or 3)]
    if args.hexdump:
        flags.append("-" + "x" * min(args.hexdump, 4))
    with GpuDevice.from_profile(args.profile) as device, \
            tempfile.TemporaryDirectory(prefix="hugepfn-lspci-") as root:
        write_sysfs_tree(device, root)
        print(run_lspci(root, *flags), end="")
    return 0
