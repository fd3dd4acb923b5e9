"""Run every benchmark module in this folder and print the figures (never a pass/fail gate),
then one table of every target measured (bench/results.py) with the machine's load."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from bench import results


def main(argv: list[str]) -> int:
    wanted = set(argv)
    load = results.LoadMeter()
    here = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if not info.name.startswith("bench_") or (wanted and info.name not in wanted):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        print(f"== {info.name} ==", flush=True)
        module.main()
        print(flush=True)
    print("== targets ==")
    print(results.table(load), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
