"""`hugepfn crosscheck SCENARIO... --kernel SERIES`: replay scenarios on a real Linux kernel.

It serves each scenario's device over vfio-user, boots a QEMU guest (TCG) with the named
Debian kernel, replays the steps in the guest's probe against the real vfio-pci driver and
diffs what the kernel did with the model's trace, step by step (docs/crosscheck.md).
Exit status: 0 when everything agrees, 1 on any disagreement, 2 for bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("crosscheck", help="replay scenarios on a real kernel in a QEMU guest and diff with the model",
                              description="Replay scenarios on a real Debian kernel in a QEMU guest and compare "
                                          "what it did with the model, step by step (needs root, the e2e root "
                                          "and Debian's archive; see docs/crosscheck.md).")
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO",
                   help="scenario files, directories of them, or names of bundled scenarios")
    p.add_argument("--kernel", required=True, metavar="SERIES",
                   help="kernel series, e.g. 6.1, 6.12, 6.16, 7.2, 7.3 (the model profile of the same name)")
    p.add_argument("--arch", default="x86_64", choices=("x86_64", "arm64"))
    p.add_argument("--cache", default=os.environ.get("HUGEPFN_CACHE", ".e2e-cache"),
                   help="where the QEMU root, the kernels and the probe are cached (default: .e2e-cache)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--logs", metavar="DIR", help="keep the guests' console and probe output here "
                                                 "(default: CACHE/logs/crosscheck)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every step, not only disagreements")
    p.set_defaults(func=run)


def scenario_paths(names: list[str]) -> list[Path]:
    from hugepfn.fixtures import SCENARIOS

    out: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            out += sorted(path.glob("*.toml"))
        elif path.exists():
            out.append(path)
        elif (SCENARIOS / f"{name}.toml").exists():
            out.append(SCENARIOS / f"{name}.toml")
        else:
            raise ValueError(f"{name}: no such scenario file or bundled scenario")
    return out


def check_host(cache: Path) -> None:
    """What every crosscheck needs before it fetches anything (ValueError: one line)."""
    if os.geteuid() != 0:
        raise ValueError("the guest runs in a chroot and a private mount namespace: run as root")
    root = cache / "trixie-root"
    if not (root / ".hugepfn-root-complete").exists():
        raise ValueError(f"no QEMU root in {root}: build it with `make e2e-root` (e2e/build-root.sh {cache})")


def run(args: argparse.Namespace) -> int:
    from hugepfn.crosscheck import report as report_mod
    from hugepfn.crosscheck.boot import BootError
    from hugepfn.crosscheck.kernels import ARM64_SERIES, X86_SERIES, KernelError
    from hugepfn.crosscheck.runner import crosscheck
    from hugepfn.host.kernel import PROFILES

    series = X86_SERIES if args.arch == "x86_64" else ARM64_SERIES
    if args.kernel not in PROFILES:
        raise ValueError(f"--kernel {args.kernel}: no model profile of that name (known: {', '.join(PROFILES)})")
    if args.kernel not in series:
        raise ValueError(f"--kernel {args.kernel}: no Debian build is crosschecked for it on {args.arch} "
                         f"(crosschecked: {', '.join(series)})")
    cache = Path(args.cache).resolve()
    check_host(cache)
    paths = scenario_paths(args.scenarios)
    from hugepfn.crosscheck.mirror import debian_mirror
    logs = Path(args.logs) if args.logs else cache / "logs" / "crosscheck"
    try:
        report = crosscheck(paths, args.kernel, args.arch, cache, debian_mirror(), logs,
                            progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (KernelError, BootError) as exc:
        raise ValueError(str(exc)) from None
    if args.json:
        print(json.dumps(report_mod.to_json(report), indent=1))
    else:
        sys.stdout.write(report_mod.text(report, args.verbose))
    if args.junit:
        Path(args.junit).write_bytes(report_mod.junit([report]))
    return 0 if all(r.agrees or r.skipped for r in report.results) else 1
