"""`hugepfn backend-json`: the JSON description of the vfio-user backend, for management tools.

    hugepfn backend-json                      # print it
    hugepfn backend-json --install            # write /usr/share/vfio-user/50-hugepfn-gpu.json
    hugepfn backend-json --install --dir D    # or into D

QEMU's vfio-user backend program conventions ask that a backend program come with a JSON
file under ``/usr/share/vfio-user``.  The vfio-user document has no schema for it yet (it
points at vhost-user's), so the file has the fields of vhost-user.json's ``VhostUserBackend``:
``description``, ``type``, ``binary`` (an absolute path) and ``tags``.  The numbered file
name follows vhost-user's advice, so that a sysadmin can override or hide it with a file of
the same name in a more specific directory.  ``binary`` is the ``hugepfn-vfio-user``
program installed with this package, which takes --socket-path/--fd itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .main import version

DEFAULT_DIR = "/usr/share/vfio-user"
FILE_NAME = "50-hugepfn-gpu.json"
PROGRAM = "hugepfn-vfio-user"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "backend-json", help="print or install the vfio-user backend description (JSON)",
        description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--install", action="store_true", help=f"write DIR/{FILE_NAME} instead of printing it")
    parser.add_argument("--dir", default=DEFAULT_DIR, metavar="DIR",
                        help=f"where --install writes (default: {DEFAULT_DIR}, the conventions' location)")
    parser.set_defaults(func=run)


def backend_program() -> str:
    """Absolute path of `hugepfn-vfio-user`: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name(PROGRAM)
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(PROGRAM)
    if found is None:
        raise FileNotFoundError(f"{PROGRAM} is neither beside {sys.executable} nor on PATH "
                                "(it is installed with the hugepfn package)")
    return os.path.abspath(found)


def description() -> dict:
    from hugepfn.device.profiles import available_profiles

    return {"description": "hugepfn: emulated GPU with huge-pfnmap BARs and a poison model (vfio-user)",
            "type": "gpu",
            "binary": backend_program(),
            "tags": [f"hugepfn {version()}", "profiles: " + ", ".join(available_profiles())]}


def install(directory: str | os.PathLike) -> Path:
    """Write the description atomically (a reader never sees half a file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILE_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(description(), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def run(args: argparse.Namespace) -> int:
    if args.install:
        target = install(args.dir)
        print(f"installed {target} (binary {description()['binary']})")
    else:
        print(json.dumps(description(), indent=2))
    return 0
