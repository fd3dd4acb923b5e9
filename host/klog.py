"""The kernel log: printk lines in order, with dynamic-debug lines formatted lazily.

The fault hot path appends a (formatter, args) tuple only when dynamic debug is on, and
memory_failure appends its per-process lines the same way; the string is built when a trace
or a person reads the log.
"""
from __future__ import annotations

from itertools import repeat
from typing import Callable, Iterable, Iterator


# DEFAULT_RATELIMIT_INTERVAL (5 * HZ) and DEFAULT_RATELIMIT_BURST, as dev_dbg_ratelimited uses
RATELIMIT_INTERVAL_MS = 5000
RATELIMIT_BURST = 10


class RateLimit:
    """One call site's struct ratelimit_state (lib/ratelimit.c ___ratelimit, single caller):
    the window opens at the first call; ``burst`` messages pass per window; the first call
    after the window has expired reports how many were suppressed and opens a new window."""
    __slots__ = ("begin", "printed", "missed", "started")

    def __init__(self) -> None:
        self.begin = 0
        self.printed = 0
        self.missed = 0
        self.started = False

    def allow(self, now_ms: int, site: str, log: "KernelLog") -> bool:
        if not self.started:
            self.started = True
            self.begin = now_ms
        if now_ms > self.begin + RATELIMIT_INTERVAL_MS:       # time_is_before_jiffies(begin + interval)
            if self.missed:
                log.printk(f"{site}: {self.missed} callbacks suppressed")
                self.missed = 0
            self.begin = now_ms
            self.printed = 0
        if self.printed < RATELIMIT_BURST:
            self.printed += 1
            return True
        self.missed += 1
        return False

    def allow_many(self, now_ms: int, n: int, site: str, log: "KernelLog") -> int:
        """``n`` calls at the same instant: how many of them (the first ones) print."""
        if n <= 0:
            return 0
        passed = int(self.allow(now_ms, site, log))
        extra = min(n - 1, RATELIMIT_BURST - self.printed)
        self.printed += extra
        self.missed += n - 1 - extra
        return passed + extra


class KernelLog:
    def __init__(self, clock=None) -> None:
        self._entries: list = []    # str | (callable, args)
        self.dyndbg = True          # dynamic debug of the fault handlers enabled
        self.clock = clock          # virtual time (Machine.clock) for the rate limits
        self._limits: dict[str, RateLimit] = {}

    def debug_ratelimited(self, site: str, fmt: Callable[..., str], *args) -> None:
        """dev_dbg_ratelimited at call site ``site`` (its function name), the line formatted lazily."""
        limit = self._limits.get(site)
        if limit is None:
            limit = self._limits[site] = RateLimit()
        if limit.allow(self.clock.now_ms if self.clock is not None else 0, site, self):
            self._entries.append((fmt, args))

    def debug_ratelimited_count(self, site: str, n: int) -> int:
        """``n`` dev_dbg_ratelimited calls at ``site`` at once: how many print (the caller adds
        those lines); the suppressed ones are counted for the next report."""
        limit = self._limits.get(site)
        if limit is None:
            limit = self._limits[site] = RateLimit()
        return limit.allow_many(self.clock.now_ms if self.clock is not None else 0, n, site, self)

    def printk(self, line: str) -> None:
        self._entries.append(line)

    def lazy(self, fmt: Callable[..., str], *args) -> None:
        self._entries.append((fmt, args))

    def lazy_runs(self, fmt: Callable[..., str], runs: Iterable[tuple[tuple, int]]) -> None:
        """For each (args, count) of ``runs``, ``count`` lazy lines of ``fmt(*args)`` in a row that
        share one entry (kill_procs: a line per VMA, the same line for all of a thread's VMAs)."""
        extend = self._entries.extend
        for args, count in runs:
            extend(repeat((fmt, args), count))

    def __len__(self) -> int:
        return len(self._entries)

    def lines(self, start: int = 0, end: int | None = None) -> list[str]:
        out = []
        for entry in self._entries[start:end]:
            if isinstance(entry, str):
                out.append(entry)
            else:
                fmt, args = entry
                out.append(fmt(*args))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines())

    def clear(self) -> None:
        self._entries.clear()
