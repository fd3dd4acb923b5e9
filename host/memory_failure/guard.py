"""The consumption-loop guard for VMMs (the huge-pfnmap v2 thread, Aug 2024: "a reasonable VMM should have means to detect
and break" a memory-error-consumption loop).

Every consumption of a poisoned pfn by a process — a machine check on a mapped poisoned
page, or a fault that returned VM_FAULT_HWPOISON — is counted per (process, pfn).  When a
count reaches ``threshold`` one ConsumptionLoop is reported: appended to ``events`` and
handed to every callback in ``callbacks`` (the events publisher hooks in here).  Further
consumptions keep counting but report again only each time the count reaches another
multiple of the threshold, so a tight loop produces a bounded stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ConsumptionLoop:
    pid: int
    tid: int
    comm: str
    pfn: int
    count: int
    how: str            # "mce" (machine check on a mapped page) | "fault" (VM_FAULT_HWPOISON)


class ConsumptionGuard:
    def __init__(self, threshold: int = 3) -> None:
        self.threshold = threshold
        self.counts: dict[tuple[int, int], int] = {}
        self.events: list[ConsumptionLoop] = []
        self.callbacks: list[Callable[[ConsumptionLoop], None]] = []

    @property
    def threshold(self) -> int:
        return self._threshold

    @threshold.setter
    def threshold(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"consumption guard threshold must be a positive integer, got {value!r}")
        self._threshold = value

    def consumed(self, pid: int, tid: int, comm: str, pfn: int, how: str) -> ConsumptionLoop | None:
        key = (pid, pfn)
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n % self._threshold:
            return None
        event = ConsumptionLoop(pid, tid, comm, pfn, n, how)
        self.events.append(event)
        for cb in list(self.callbacks):
            cb(event)
        return event

    def count(self, pid: int, pfn: int) -> int:
        return self.counts.get((pid, pfn), 0)

    def count_over(self, pids, pfn: int) -> int:
        """Consumptions of ``pfn`` by the processes in ``pids``: a walk over what was counted
        (few entries), not over the processes (10,000 VMAs' worth on a big machine)."""
        return sum(n for (pid, p), n in self.counts.items() if p == pfn and pid in pids)

    def forget(self, pfn: int) -> None:
        """The pfn was repaired: its counts start again."""
        for key in [k for k in self.counts if k[1] == pfn]:
            del self.counts[key]
