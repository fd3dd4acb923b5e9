"""The kernel log: printk lines in order, with dynamic-debug lines formatted lazily.

The fault hot path appends a (formatter, args) tuple only when dynamic debug is on, and
memory_failure appends its per-process lines the same way; the string is built when a trace
or a person reads the log.
"""
from __future__ import annotations

from typing import Callable, Iterator


class KernelLog:
    def __init__(self) -> None:
        self._entries: list = []    # str | (callable, args)
        self.dyndbg = True          # dynamic debug of the fault handlers enabled

    def printk(self, line: str) -> None:
        self._entries.append(line)

    def lazy(self, fmt: Callable[..., str], *args) -> None:
        self._entries.append((fmt, args))

    def lazy_repeat(self, n: int, fmt: Callable[..., str], *args) -> None:
        """``n`` identical lazy lines (one per VMA signalled in one process)."""
        self._entries.extend([(fmt, args)] * n)

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
