"""The targets `make bench` measures and the table it ends with: measure, figure, target, met.

Benchmark modules call ``record`` next to the line they print; ``python -m bench`` prints every
recorded row once at the end, with the machine's load during the run (timings on a shared
2-core machine mean little without it).  Nothing here fails a run: the table is a report.
"""
from __future__ import annotations

import os
import resource
import time
import timeit
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    measure: str
    figure: str
    target: str
    met: bool | None            # None: not measured in this run (say why in ``figure``)


ROWS: list[Row] = []


def record(measure: str, figure: str, target: str, met: bool | None) -> None:
    ROWS.append(Row(measure, figure, target, met))


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]                        # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def _probe_work() -> int:
    d = {}
    for i in range(20_000):
        d[i & 1023] = (i, i + 1)
    return len(d)


def speed_probe() -> float:
    """Milliseconds a fixed pure-Python loop (dict stores of new tuples) takes, the best of 5.
    The same code's time moves with this VM's speed (up to 2x for minutes, see
    docs/performance.md); the probe taken before each benchmark says how fast the machine was
    while it ran."""
    return min(timeit.repeat(_probe_work, number=5, repeat=5)) / 5 * 1e3


class LoadMeter:
    """The machine's load over the run: load averages at both ends, how busy all CPUs were,
    split into this benchmark (itself and its children) and everything else, and the speed
    probe's range."""

    def __init__(self) -> None:
        self.load_start = os.getloadavg()
        self.ticks_start = _cpu_ticks()
        self.own_start = _own_cpu_seconds()
        self.wall_start = time.monotonic()
        self.probes: list[tuple[str, float]] = []

    def probe(self, when: str) -> float:
        """Take the speed probe and keep it (``when``: the benchmark about to run, or "end")."""
        ms = speed_probe()
        self.probes.append((when, ms))
        return ms

    def summary(self) -> str:
        busy0, total0 = self.ticks_start
        busy1, total1 = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        cpus = os.cpu_count() or 1
        wall = time.monotonic() - self.wall_start
        busy = (busy1 - busy0) / hz                     # CPU-seconds of every process
        own = _own_cpu_seconds() - self.own_start
        others = max(busy - own, 0.0)
        load_end = os.getloadavg()
        line = (f"machine load during the run ({wall:.0f} s, {cpus} CPUs): load average "
                f"{self.load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; CPUs busy "
                f"{busy / (wall * cpus) * 100:.0f} % ({own / (wall * cpus) * 100:.0f} % this benchmark, "
                f"{others / (wall * cpus) * 100:.0f} % other processes)")
        if self.probes:
            line += ("\nspeed probe (a fixed Python loop, best of 5; lower is faster): "
                     + ", ".join(f"{when} {ms:.2f} ms" for when, ms in self.probes))
        return line


def table(load: LoadMeter | None = None) -> str:
    """The rows as a Markdown table, then the load line."""
    lines = ["| measure | figure | target | met |", "|---|---:|---|---|"]
    for row in ROWS:
        met = "n/a" if row.met is None else ("yes" if row.met else "NOT MET")
        lines.append(f"| {row.measure} | {row.figure} | {row.target} | {met} |")
    if load is not None:
        lines.append("")
        lines.append(load.summary())
    return "\n".join(lines)
