"""`hugepfn run FILE.toml [--json]`: run a scenario and print its trace."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run a scenario file and print its trace",
                              description="Run a scenario (TOML) on the emulated host and print the trace: "
                                          "a readable table, or the JSON form with --json.")
    p.add_argument("file", metavar="FILE.toml", help="scenario file")
    p.add_argument("--json", action="store_true", help="print the trace as JSON (its form: docs/scenarios.md)")
    p.add_argument("-o", "--output", metavar="PATH", help="write the trace here instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.scenario import load_scenario, run_scenario

    from .progress import step_progress

    scenario = load_scenario(args.file)
    with step_progress(len(scenario.steps), "run") as on_step:
        trace = run_scenario(scenario, on_step)
    text = trace.dumps() if args.json else trace.render()
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
