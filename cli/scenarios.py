"""`hugepfn scenarios`: list the bundled scenarios (run one with `hugepfn run NAME`)."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scenarios", help="list the bundled scenarios",
                              description="List the scenarios that come with hugepfn: name, steps, expectations "
                                          "and description. Run one with `hugepfn run NAME`.")
    p.add_argument("--json", action="store_true", help="one JSON object per scenario, one per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.scenario import load_scenario
    from hugepfn.host.scenario.files import bundled

    rows = []
    for path in bundled():
        s = load_scenario(path)
        rows.append({"name": path.stem, "steps": len(s.steps), "expectations": s.expectations,
                     "description": s.description.strip().splitlines()[0] if s.description.strip() else "",
                     "path": str(path)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        sys.stdout.write(f"{r['name']:<{width}}  {r['steps']:>3} steps  {r['expectations']:>3} expectations  "
                         f"{r['description']}\n")
    return 0
