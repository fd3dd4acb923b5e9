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
    failed: list[str] = []
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if not info.name.startswith("bench_") or (wanted and info.name not in wanted):
            continue
        print(f"== {info.name} == (speed probe: {load.probe(info.name.removeprefix('bench_')):.2f} ms)", flush=True)
        try:
            importlib.import_module(f"bench.{info.name}").main()
        except Exception as exc:        # one line, and the other benchmarks still run
            failed.append(info.name)
            print(f"bench: {info.name} stopped: {type(exc).__name__}: {exc}", flush=True)
        print(flush=True)
    load.probe("end")
    print("== targets ==")
    print(results.table(load), flush=True)
    if failed:
        print(f"bench: {len(failed)} benchmark(s) stopped before their end: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
