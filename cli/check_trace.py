"""`hugepfn check-trace TRACE.json [...]`: check that traces have the form docs/scenarios.md specifies
(hugepfn.host.trace_check; also `python -m hugepfn.host.trace_check`)."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check-trace", help="check the form of trace files (from `hugepfn run --json`)",
                              description="Check that traces have the form docs/scenarios.md specifies: one "
                                          "line per problem, then FILE: trace ok or FILE: N problem(s); "
                                          "exit status 1 if any file has a problem.")
    p.add_argument("files", nargs="+", metavar="TRACE.json", help="trace files (- for stdin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.trace_check import check_files

    return check_files(args.files)
