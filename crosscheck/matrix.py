"""`make crosscheck`: every crosscheckable fixture on every kernel of the matrix.

    python -m hugepfn.crosscheck.matrix [--cache .e2e-cache] [--kernels 6.1,7.3] [--arch x86_64]
                                        [--jobs N] [--junit FILE] [--record DIR] [SCENARIO...]

It runs hugepfn.crosscheck.runner once per kernel, ``--jobs`` kernels at a time (default:
one per CPU; a TCG guest with one vCPU keeps one core busy, so two kernels on two cores
take about the time of one), prints each kernel's disagreements and one summary table (kernel, Debian build, boots, seconds, scenarios and steps agreed), and
exits 1 if any step disagrees anywhere.  ``--record DIR`` keeps what each guest printed per
scenario (the kernel's own output, with the BAR placement) as test data for
tests/crosscheck, which replays it through the converter and the diff on every CI run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from . import report as report_mod
from .boot import BootError, build_probe
from .kernels import ARM64_SERIES, X86_SERIES, KernelError, fetch
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


def _say(series: str, msg: str) -> None:
    print(f"[{series}] {msg}", file=sys.stderr, flush=True)


def _one_kernel(paths: list[Path], series: str, arch: str, cache: Path, mirror: str) -> Report:
    """One kernel's crosscheck (in a worker process: its served devices and its guest are its own)."""
    return crosscheck(paths, series, arch, cache, mirror, cache / "logs" / "crosscheck",
                      progress=lambda msg: _say(series, msg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="default: every bundled scenario")
    parser.add_argument("--cache", default=".e2e-cache")
    parser.add_argument("--kernels", help="comma-separated series (default: the whole matrix)")
    parser.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="kernels crosschecked at the same time (default: one per CPU)")
    parser.add_argument("--junit", metavar="FILE")
    parser.add_argument("--record", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, KernelError, BootError) as exc:
        print(f"hugepfn crosscheck: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from hugepfn.cli.crosscheck import check_host, scenario_paths
    from hugepfn.fixtures import SCENARIOS

    paths = scenario_paths(args.scenarios) if args.scenarios else sorted(SCENARIOS.glob("*.toml"))
    cache = Path(args.cache).resolve()
    check_host(cache)
    matrix = []
    for arch, series in (("x86_64", X86_SERIES), ("arm64", ARM64_SERIES)):
        if args.arch in (arch, "all"):
            matrix += [(arch, s) for s in series if not args.kernels or s in args.kernels.split(",")]
    started = time.monotonic()
    mirror = debian_mirror()
    # what the workers share is made here, one at a time: the kernels (one apt cache) and the probe
    has_vfio = {(arch, series): fetch(series, arch, cache, mirror).has_vfio for arch, series in matrix}
    for arch in sorted({arch for arch, _ in matrix}):
        build_probe(arch, cache)
    reports = []
    # spawn, not fork: each worker starts its own device servers and guest from a clean process
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        # the long runs (kernels with vfio modules boot guests) start first, the short ones fill in
        started_order = sorted(matrix, key=lambda k: not has_vfio[k])
        futures = {k: pool.submit(_one_kernel, paths, k[1], k[0], cache, mirror) for k in started_order}
        futures = [futures[k] for k in matrix]
        for future in futures:                 # printed in matrix order, whichever finishes first
            rep = future.result()
            reports.append(rep)
            sys.stdout.write(report_mod.text(rep))
            sys.stdout.flush()
            if args.record:
                record(rep, Path(args.record))
    print()
    sys.stdout.write(summary(reports))
    print(f"crosscheck: {len(reports)} kernels, {sum(r.boots for r in reports)} guest boots, "
          f"{time.monotonic() - started:.0f} s with {args.jobs} at a time")
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_bytes(report_mod.junit(reports))
    disagree = any(not (r.agrees or r.skipped) for rep in reports for r in rep.results)
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
