"""hugepfn.host.memory_failure: memory_failure() for device pfns without struct page, the
pfn_address_space registry, injection interfaces, hardware poison consumption, and the
poison policies (upstream / hard-offline / split) — ref sections 4-6.

Every Machine has one model (``Machine(memory_failure=True)``, the default:
CONFIG_MEMORY_FAILURE=y; ``False``: the =n stubs), as ``machine.memory_failure``.  Its
hardware-poison model becomes the machine's hw_poison hook when a first pfn is poisoned.
The scenario step kinds of this package are declared in steps.py and wired in
hugepfn.host.scenario.wiring; importing this package registers nothing anywhere.

    from hugepfn.host.machine import Machine
    from hugepfn.host.memory_failure import MF_ACTION_REQUIRED
    m = Machine(kernel="7.0", policy="hard-offline")
    m.memory_failure.memory_failure(pfn, MF_ACTION_REQUIRED, current=m.tasks.thread(4242))
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .collect import ToKill, ToKillList, collect_procs_pfn, task_early_kill
from .core import MemoryFailure, MfOutcome
from .flags import (MF_ACTION_REQUIRED, MF_COUNT_INCREASED, MF_FLAG_NAMES, MF_MEM_PRE_REMOVE, MF_MSG_PFN_MAP,
                    MF_MUST_KILL, MF_NO_RETRY, MF_SOFT_OFFLINE, MF_SW_SIMULATED, MF_UNPOISON, KernelPanic,
                    MfResult, parse_mf_flags)
from .guard import ConsumptionGuard, ConsumptionLoop
from .inject import corrupt_pfn, hard_offline_page, madvise_hwpoison, soft_offline_page, unpoison_pfn
from .policies import POLICY_CLASSES, hard_offline, make_policy, split_in_place
from .policies.repair import collapse, repair_pfn
from .poison_set import PoisonSet
from .registry import PfnSpaceRegistry, RegistryCorruption

if TYPE_CHECKING:
    from ..machine import Machine


def memory_failure_of(machine: "Machine") -> MemoryFailure:
    """``machine.memory_failure`` (kept for callers that take any machine-like object)."""
    return machine.memory_failure


__all__ = [
    "ConsumptionGuard", "ConsumptionLoop", "KernelPanic", "MF_ACTION_REQUIRED", "MF_COUNT_INCREASED",
    "MF_FLAG_NAMES", "MF_MEM_PRE_REMOVE", "MF_MSG_PFN_MAP", "MF_MUST_KILL", "MF_NO_RETRY", "MF_SOFT_OFFLINE",
    "MF_SW_SIMULATED", "MF_UNPOISON", "MemoryFailure", "MfOutcome", "MfResult", "POLICY_CLASSES", "PfnSpaceRegistry",
    "PoisonSet", "RegistryCorruption", "ToKill", "ToKillList", "collapse", "collect_procs_pfn", "corrupt_pfn", "hard_offline",
    "hard_offline_page", "madvise_hwpoison", "make_policy", "memory_failure_of", "parse_mf_flags", "repair_pfn",
    "soft_offline_page", "split_in_place", "task_early_kill", "unpoison_pfn",
]
