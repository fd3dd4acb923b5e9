"""`hugepfn compare SCENARIO [--png FILE] [--json]`: run one scenario under the three poison
policies (upstream, hard-offline, split) and print their summaries side by side."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="run a scenario under every poison policy, side by side",
                              description="Run one scenario under the upstream, hard-offline and split poison "
                                          "policies and print leaf entries per level, faults taken, bytes made "
                                          "unreachable (blast radius) and signals sent for each.")
    p.add_argument("file", metavar="SCENARIO.toml", help="scenario file (its own policy is ignored)")
    p.add_argument("--png", metavar="FILE", help="also draw the BAR's mapping levels and poisoned pages")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.memory_failure.compare import POLICY_ORDER, holds_poison, render_table, run_all_policies
    from hugepfn.host.scenario import load_scenario

    from .progress import step_progress

    if args.png:      # refused before the runs, not after them
        _check_png(args.png)
    from hugepfn.host.scenario.files import resolve

    try:
        path = resolve(args.file)
    except FileNotFoundError as exc:        # a missing scenario is bad input, as for `hugepfn run`
        raise ValueError(exc.strerror) from None
    scenario = load_scenario(path)
    with step_progress(len(scenario.steps) * len(POLICY_ORDER), "compare") as on_step:
        runs = run_all_policies(scenario, on_step)
    if not holds_poison(runs):
        print(f"hugepfn compare: warning: {args.file} holds no poison (no poison, inject or memory_failure "
              "step did anything): every policy behaves the same", file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps({r.policy: r.summary for r in runs}, indent=1) + "\n")
    else:
        sys.stdout.write(render_table(runs, scenario.policy))
    if args.png:
        from hugepfn.host.memory_failure.picture import write_png

        path = write_png(runs, args.png, title=f"hugepfn compare {args.file}")
        if not args.json:
            sys.stdout.write(f"picture: {path}\n")
    return 0


def _check_png(name: str) -> None:
    if not name.lower().endswith(".png"):
        raise ValueError(f"--png: the file name must end in .png, got {name!r}")
    try:
        import matplotlib  # noqa: F401  (the picture is drawn with it)
    except ImportError:
        raise ValueError("--png needs matplotlib, which comes with the optional extra 'plot': "
                         "pip install 'hugepfn[plot]'") from None
