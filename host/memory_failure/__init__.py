"""hugepfn.host.memory_failure: memory_failure() for device pfns without struct page, the
pfn_address_space registry, injection interfaces, hardware poison consumption, and the
poison policies (upstream / hard-offline / split) — ref sections 4-6.

Importing the package attaches a MemoryFailure to every new Machine (machine.extensions
["memory_failure"]), routes the machine's register/unregister_pfn_address_space to it (its
hardware-poison model becomes the machine's hw_poison hook when a first pfn is poisoned), gives
the scenario runner handlers for the poison step kinds, and adds ``poison_summary`` to traces.

    from hugepfn.host.machine import Machine
    from hugepfn.host.memory_failure import memory_failure_of, MF_ACTION_REQUIRED
    m = Machine(kernel="7.0", policy="hard-offline")
    mf = memory_failure_of(m)
    mf.memory_failure(pfn, MF_ACTION_REQUIRED, current=m.tasks.thread(4242))
"""
from __future__ import annotations

from ..machine import MACHINE_EXTENSIONS, Machine
from .callbacks import make_callback, region_space
from .collect import ToKill, collect_procs_pfn, task_early_kill
from .core import MemoryFailure, MfOutcome
from .flags import (MF_ACTION_REQUIRED, MF_COUNT_INCREASED, MF_FLAG_NAMES, MF_MEM_PRE_REMOVE, MF_MSG_PFN_MAP,
                    MF_MUST_KILL, MF_NO_RETRY, MF_SOFT_OFFLINE, MF_SW_SIMULATED, MF_UNPOISON, KernelPanic,
                    MfResult, parse_mf_flags)
from .guard import ConsumptionGuard, ConsumptionLoop
from .inject import corrupt_pfn, hard_offline_page, madvise_hwpoison, soft_offline_page, unpoison_pfn
from .policies import POLICY_CLASSES, make_policy
from .policies.repair import collapse, repair_pfn
from .poison_set import PoisonSet
from .registry import PfnSpaceRegistry, RegistryCorruption

EXTENSION_KEY = "memory_failure"


def attach(machine: Machine, config_memory_failure: bool = True, nvgrace_callback: str = "literal") -> MemoryFailure:
    """Give ``machine`` a memory-failure model (done for every Machine when this package is imported;
    call again before adding devices to choose CONFIG_MEMORY_FAILURE=n or the fixed nvgrace callback)."""
    mf = MemoryFailure(machine, config_memory_failure, nvgrace_callback=nvgrace_callback)
    machine.extensions[EXTENSION_KEY] = mf
    machine.register_pfn_address_space = mf.register_pfn_address_space
    machine.unregister_pfn_address_space = mf.unregister_pfn_address_space
    machine.hw_poison = None            # mf.hardware installs itself with the first poisoned pfn
    return mf


def memory_failure_of(machine: Machine) -> MemoryFailure:
    mf = machine.extensions.get(EXTENSION_KEY)
    if mf is None:
        mf = attach(machine)
    return mf


if attach not in MACHINE_EXTENSIONS:
    MACHINE_EXTENSIONS.append(attach)


def _poison_summary(run) -> None:
    """Trace finisher: the per-policy summary, for runs that handled poison."""
    from .summary import policy_summary

    mf = memory_failure_of(run.machine)
    if mf.outcomes or mf.hardware.poisoned_pfns() or mf.drivers:
        summary = policy_summary(run.machine)
        del summary["policy"]                   # the trace header says it
        run.trace.extra["poison_summary"] = summary


def _install_finisher() -> None:
    from ..scenario import runner

    finishers = getattr(runner, "RUN_FINISHERS", None)
    if finishers is not None and _poison_summary not in finishers:
        finishers.append(_poison_summary)

from . import steps as _steps  # noqa: E402,F401  (registers the scenario step handlers)

_install_finisher()

__all__ = [
    "ConsumptionGuard", "ConsumptionLoop", "KernelPanic", "MF_ACTION_REQUIRED", "MF_COUNT_INCREASED",
    "MF_FLAG_NAMES", "MF_MEM_PRE_REMOVE", "MF_MSG_PFN_MAP", "MF_MUST_KILL", "MF_NO_RETRY", "MF_SOFT_OFFLINE",
    "MF_SW_SIMULATED", "MF_UNPOISON", "MemoryFailure", "MfOutcome", "MfResult", "POLICY_CLASSES", "PfnSpaceRegistry",
    "PoisonSet", "RegistryCorruption", "ToKill", "attach", "collapse", "collect_procs_pfn", "corrupt_pfn",
    "hard_offline_page", "madvise_hwpoison", "make_callback", "make_policy", "memory_failure_of", "parse_mf_flags",
    "region_space", "repair_pfn", "soft_offline_page", "task_early_kill", "unpoison_pfn",
]
