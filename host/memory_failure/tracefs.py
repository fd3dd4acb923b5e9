"""The memory_failure_event tracepoint (action_result()): the line `trace` shows for one call.

The event lived in the `ras` trace system (include/ras/ras_event.h) and moved to
`memory_failure` (include/trace/events/memory-failure.h) in late 2025, with the pfnmap
series; KernelProfile.memory_failure_trace_system says which a kernel has (the crosscheck
guest lists the tracefs systems it finds).
"""
from __future__ import annotations


class TraceBuffer:
    """Trace lines in order; a consumer remembers len() and reads what follows."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.lines: list[str] = []

    def memory_failure_event(self, pfn: int, page_type: str, result: str) -> str:
        line = f"{self.system}:memory_failure_event: pfn {pfn:#x}: recovery action for {page_type}: {result}"
        self.lines.append(line)
        return line

    def __len__(self) -> int:
        return len(self.lines)
