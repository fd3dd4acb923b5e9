"""memory_failure() vocabulary: enum mf_flags, the action results and page types of
action_result(), and the panic the model raises when vm.memory_failure_recovery is 0 (docs/kernel-reference.md: memory_failure)."""
from __future__ import annotations

import enum

# enum mf_flags (include/linux/mm.h)
MF_COUNT_INCREASED = 1 << 0
MF_ACTION_REQUIRED = 1 << 1
MF_MUST_KILL = 1 << 2
MF_SOFT_OFFLINE = 1 << 3
MF_UNPOISON = 1 << 4
MF_SW_SIMULATED = 1 << 5
MF_NO_RETRY = 1 << 6
MF_MEM_PRE_REMOVE = 1 << 7

MF_FLAG_NAMES = {
    "MF_COUNT_INCREASED": MF_COUNT_INCREASED, "MF_ACTION_REQUIRED": MF_ACTION_REQUIRED,
    "MF_MUST_KILL": MF_MUST_KILL, "MF_SOFT_OFFLINE": MF_SOFT_OFFLINE, "MF_UNPOISON": MF_UNPOISON,
    "MF_SW_SIMULATED": MF_SW_SIMULATED, "MF_NO_RETRY": MF_NO_RETRY, "MF_MEM_PRE_REMOVE": MF_MEM_PRE_REMOVE,
}


def parse_mf_flags(names: list[str]) -> int:
    """["MF_ACTION_REQUIRED", ...] -> the flag word; ValueError names an unknown flag."""
    value = 0
    for name in names:
        try:
            value |= MF_FLAG_NAMES[name]
        except KeyError:
            raise ValueError(f"unknown memory_failure flag {name!r} (known: {', '.join(MF_FLAG_NAMES)})") from None
    return value


class MfResult(enum.IntEnum):
    """enum mf_result; the names are what action_result prints."""
    MF_IGNORED = 0
    MF_FAILED = 1
    MF_DELAYED = 2
    MF_RECOVERED = 3


ACTION_NAME = {MfResult.MF_IGNORED: "Ignored", MfResult.MF_FAILED: "Failed",
               MfResult.MF_DELAYED: "Delayed", MfResult.MF_RECOVERED: "Recovered"}

# enum mf_action_page_type: only the pfnmap type is reachable for device memory.
MF_MSG_PFN_MAP = "non struct page pfn"

# pr_fmt of mm/memory-failure.c
PR_PREFIX = "Memory failure: "


class KernelPanic(RuntimeError):
    """panic(): the emulated kernel stopped.  ``message`` is what panic() was given."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Kernel panic - not syncing: {message}")
        self.message = message

    @property
    def log_line(self) -> str:
        return str(self)
