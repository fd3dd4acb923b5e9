"""`hugepfn run SCENARIO...`: run scenarios, check their expectations, print traces or reports.

SCENARIO is a file, a directory of *.toml files, or the bare name of a bundled scenario
(`hugepfn run demo`).  One scenario prints its trace (table, or --json); several print one
line each.  Exit status: 0 when every expectation holds, 1 when one does not (each failure
names the step, the field, what was expected and what the step did), 2 for bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run scenarios, check their expectations, print the trace",
        description="Run scenarios (TOML) on the emulated host and check each step's [step.expect] table. "
                    "One scenario prints its trace: a readable table, or the JSON form with --json. Several "
                    "(or a directory) print one line per scenario. Exit status 0: every expectation holds; "
                    "1: one failed (printed as step, field, expected, got); 2: bad input.")
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO",
                   help="a scenario file, a directory of them, or a bundled scenario's name (see `hugepfn scenarios`)")
    p.add_argument("--json", action="store_true", help="print the trace as JSON (one scenario; docs/scenarios.md)")
    p.add_argument("-o", "--output", metavar="PATH", help="write the trace here instead of stdout (one scenario)")
    p.add_argument("--tap", action="store_true", help="print a TAP version 14 report instead of traces")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument("--golden", metavar="PATH",
                   help="compare each trace with a golden trace: a file (one scenario) or a directory of "
                        "NAME.json; a difference fails, shown as a unified diff")
    p.add_argument("--update-golden", action="store_true",
                   help="with --golden: rewrite golden traces that differ and print the diff to review; "
                        "the run still fails, so nothing is accepted unseen")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.scenario.files import expand
    from hugepfn.host.scenario.reports import failure_lines, tap, text_lines, write_junit
    from hugepfn.host.scenario.results import run_checked

    from .progress import step_progress

    try:
        paths = expand(args.scenarios)
    except OSError as exc:                  # a missing scenario is bad input, like a malformed one
        raise ValueError(exc.strerror or str(exc)) from None
    single = len(paths) == 1
    if not single and (args.json or args.output):
        raise ValueError("--json and --output print one trace: give one scenario")
    if args.update_golden and not args.golden:
        raise ValueError("--update-golden needs --golden PATH")
    golden = Path(args.golden) if args.golden else None
    if golden is not None and not single and not golden.is_dir():
        raise ValueError(f"--golden: with several scenarios give a directory of NAME.json, got {golden}")

    results = []
    for path in paths:
        if single:
            from hugepfn.host.scenario import load_scenario
            try:
                total = len(load_scenario(path).steps)
            except (ValueError, OSError):
                total = 0               # run_checked reports the error
            with step_progress(total, "run") as on_step:
                results.append(run_checked(path, golden, args.update_golden, on_step))
        else:
            results.append(run_checked(path, golden, args.update_golden))

    if args.junit:
        write_junit(results, args.junit)
    if args.tap:
        sys.stdout.write(tap(results))
    elif single:
        result = results[0]
        if result.error is not None:
            print(f"hugepfn run: error: {result.error}", file=sys.stderr)
        else:
            text = result.trace.dumps() if args.json else result.trace.render()
            if args.output:
                with open(args.output, "w") as fh:
                    fh.write(text)
            else:
                sys.stdout.write(text)
            if result.status == "fail":
                print(f"hugepfn run: {text_lines(results)[0]}", file=sys.stderr)
                for line in failure_lines(result):
                    print(f"  {line}", file=sys.stderr)
    else:
        sys.stdout.write("\n".join(text_lines(results)) + "\n")

    if any(r.status == "error" for r in results):
        return EXIT_BAD_INPUT
    return EXIT_FAILED if any(r.status == "fail" for r in results) else 0
