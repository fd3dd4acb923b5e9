"""`make crosscheck`: every crosscheckable fixture on every kernel of the matrix.

    python -m hugepfn.crosscheck.matrix [--cache .e2e-cache] [--kernels 6.1,7.3] [--arch x86_64]
                                        [--junit FILE] [--record DIR] [SCENARIO...]

It runs hugepfn.crosscheck.runner once per kernel, prints each kernel's disagreements and
one summary table (kernel, Debian build, boots, seconds, scenarios and steps agreed), and
exits 1 if any step disagrees anywhere.  ``--record DIR`` keeps what each guest printed per
scenario (the kernel's own output, with the BAR placement) as test data for
tests/crosscheck, which replays it through the converter and the diff on every CI run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

from . import report as report_mod
from .kernels import ARM64_SERIES, X86_SERIES
from .mirror import debian_mirror
from .runner import Report, crosscheck


def record(rep: Report, directory: Path) -> None:
    """Write each scenario's raw guest output (probe lines, BAR placement, crash) to
    DIRECTORY/<release>/<scenario>.json.gz (gzip with no timestamp: a re-recording that
    saw the same kernel output writes the same bytes)."""
    out = directory / rep.release
    out.mkdir(parents=True, exist_ok=True)
    for r in rep.results:
        if r.raw is None:
            continue
        data = (json.dumps(r.raw, indent=0, sort_keys=True) + "\n").encode()
        (out / f"{r.name}.json.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def summary(reports: list[Report]) -> str:
    head = f"{'kernel':<8} {'Debian build':<26} {'boots':>5} {'s':>5}  {'scenarios':>9}  {'steps':>11}  not checked"
    lines = [head, "-" * len(head)]
    for rep in reports:
        c = report_mod.counts(rep)
        lines.append(f"{rep.series:<8} {rep.release:<26} {rep.boots:>5} {rep.seconds:>5.0f}  "
                     f"{c['scenarios_agreed']:>4}/{c['scenarios']:<4}  {c['steps_agreed']:>5}/{c['steps']:<5}  "
                     f"{c['skipped']}" + (f" (+{c['errors']} errors)" if c["errors"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="default: every bundled scenario")
    parser.add_argument("--cache", default=".e2e-cache")
    parser.add_argument("--kernels", help="comma-separated series (default: the whole matrix)")
    parser.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    parser.add_argument("--junit", metavar="FILE")
    parser.add_argument("--record", metavar="DIR")
    args = parser.parse_args(argv)
    from hugepfn.cli.crosscheck import scenario_paths
    from hugepfn.fixtures import SCENARIOS

    paths = scenario_paths(args.scenarios) if args.scenarios else sorted(SCENARIOS.glob("*.toml"))
    cache = Path(args.cache).resolve()
    matrix = []
    for arch, series in (("x86_64", X86_SERIES), ("arm64", ARM64_SERIES)):
        if args.arch in (arch, "all"):
            matrix += [(arch, s) for s in series if not args.kernels or s in args.kernels.split(",")]
    started = time.monotonic()
    reports = []
    for arch, series in matrix:
        rep = crosscheck(paths, series, arch, cache, debian_mirror(), cache / "logs" / "crosscheck",
                         progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        reports.append(rep)
        sys.stdout.write(report_mod.text(rep))
        sys.stdout.flush()
        if args.record:
            record(rep, Path(args.record))
    print()
    sys.stdout.write(summary(reports))
    print(f"crosscheck: {len(reports)} kernels, {sum(r.boots for r in reports)} guest boots, "
          f"{time.monotonic() - started:.0f} s")
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_bytes(report_mod.junit(reports))
    disagree = any(not (r.agrees or r.skipped) for rep in reports for r in rep.results)
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
