#!/usr/bin/env python3
"""Write the guest's initramfs: a gzip'ed newc cpio with busybox, /init and /etc/e2e.conf.

    mkinitramfs.py OUTPUT --busybox PATH --init SCRIPT [--set KEY=VALUE ...]

The guest needs nothing else: the Debian kernel has PCI, the 8250 serial console,
devtmpfs and /dev/mem built in, and /init installs busybox's applets itself.
The KEY=VALUE pairs become /etc/e2e.conf, a shell fragment /init sources (the
profile's ids, the offsets it checks, the page the host will poison), so one
init script serves any profile.  The cpio writer is hugepfn.crosscheck.cpio's.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys

from hugepfn.crosscheck.cpio import Newc

def config_text(pairs: list[str]) -> str:
    lines = ["# written by e2e/mkinitramfs.py for one `make e2e` run"]
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"--set wants KEY=VALUE with an upper-case shell name, got {pair!r}")
        lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def build(busybox: bytes, init: bytes, conf: str) -> bytes:
    archive = Newc()
    for directory in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp"):
        archive.directory(directory)
    archive.file("bin/busybox", busybox, 0o755)
    archive.file("init", init, 0o755)
    archive.file("etc/e2e.conf", conf.encode())
    return archive.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--busybox", required=True, help="a statically linked busybox")
    parser.add_argument("--init", required=True, help="the shell script that becomes /init")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        conf = config_text(args.set)
        with open(args.busybox, "rb") as handle:
            busybox = handle.read()
        with open(args.init, "rb") as handle:
            init = handle.read()
        image = build(busybox, init, conf)
        with open(args.output, "wb") as handle:
            handle.write(image)
    except (OSError, ValueError) as exc:
        print(f"mkinitramfs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
