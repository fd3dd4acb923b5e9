"""The one place where the scenario runner learns what it can do: every step kind, device
field, preparer, finisher and step wrapper of the default registry is added here, in this
order, and nowhere else (importing a module registers nothing).

The order is part of the output: the step kinds are listed in this order by errors and docs,
and the finishers add their trace facts in this order (``poison_summary`` before ``served``).
"""
from __future__ import annotations

from functools import cache

from ..memory_failure import steps as memory_failure_steps
from . import served, steps
from .registry import ScenarioRegistry


def build_default_registry() -> ScenarioRegistry:
    """A new registry with everything hugepfn's own models add to scenario files."""
    registry = ScenarioRegistry()
    registry.add_kinds(steps.CORE_STEP_KINDS)
    registry.add_kinds(memory_failure_steps.STEP_KINDS)
    registry.add_kinds(served.STEP_KINDS)
    registry.device_fields.append(served.SERVE_FIELD)
    registry.preparers.append(served.prepare_device)
    registry.finishers.append(memory_failure_steps.poison_summary)
    registry.finishers.append(served.close_all)
    # every step records the memory-failure trace lines and events it produced, and runs
    # nothing after a kernel panic
    registry.step_wrappers.append(memory_failure_steps.record_memory_failure)
    return registry


@cache
def default_registry() -> ScenarioRegistry:
    """The registry scenario files are parsed and run with unless a caller gives another."""
    return build_default_registry()
