"""hugepfn.host.scenario: scenario files (TOML) -> a machine, steps, and a trace.

    from hugepfn.host.scenario import run_scenario
    trace = run_scenario("fixtures/scenarios/demo.toml")
    print(trace.render())          # or trace.to_json()

What files may say is the registry of hugepfn.host.scenario.wiring (step kinds, device fields,
preparers, finishers); parse_scenario and ScenarioRun take another registry when given one.
The names below are loaded on first use, so that importing a submodule (fields, errors) does
not load the runner and everything it needs.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ScenarioError": "errors", "Field": "fields", "ScenarioRun": "runner", "build_machine": "runner",
    "run_scenario": "runner", "Scenario": "spec", "Step": "spec", "load_scenario": "spec", "parse_scenario": "spec",
    "ScenarioRegistry": "registry", "default_registry": "wiring", "build_default_registry": "wiring",
    "StepKind": "steps", "step_kind": "steps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
