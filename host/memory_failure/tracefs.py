"""The memory_failure_event tracepoint (ref 4.5): the line `trace` shows for one action_result().

The event lived in the `ras` trace system (include/ras/ras_event.h) and moved to
`memory_failure` (include/trace/events/memory-failure.h) in late 2025; the model follows
the reference and gives the 6.19 and 7.0 profiles the new location.  (An mm-tree patch later
proposed moving it back to `ras` for tools that depend on the old name; see
docs/poison-policies.md.)
"""
from __future__ import annotations

TRACE_SYSTEM_BY_PROFILE = {"6.12": "ras", "6.15": "ras", "6.19": "memory_failure", "7.0": "memory_failure"}


class TraceBuffer:
    """Trace lines in order; a consumer remembers len() and reads what follows."""

    def __init__(self, profile: str) -> None:
        self.system = TRACE_SYSTEM_BY_PROFILE.get(profile, "memory_failure")
        self.lines: list[str] = []

    def memory_failure_event(self, pfn: int, page_type: str, result: str) -> str:
        line = f"{self.system}:memory_failure_event: pfn {pfn:#x}: recovery action for {page_type}: {result}"
        self.lines.append(line)
        return line

    def __len__(self) -> int:
        return len(self.lines)
