"""Run one scenario under every poison policy and put the summaries side by side."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..scenario import Scenario, ScenarioRun, load_scenario
from .policies import POLICY_CLASSES
from .summary import SUMMARY_ROWS, format_bytes, policy_summary

POLICY_ORDER = tuple(POLICY_CLASSES)        # upstream, hard-offline, split


@dataclasses.dataclass
class PolicyRun:
    policy: str
    run: ScenarioRun
    summary: dict
    # after each step: (step index, kind, {pid: [(level, region offset, length), ...]}) of the
    # region the picture shows (picture.region_runs)
    history: list = dataclasses.field(default_factory=list)


def run_all_policies(scenario: Scenario | str | Path, on_step=None) -> list[PolicyRun]:
    """``on_step(record)`` is called after every step of every policy's run (progress)."""
    from .picture import leaf_snapshot

    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    out = []
    for policy in POLICY_ORDER:
        run = ScenarioRun(dataclasses.replace(scenario, policy=policy))
        history: list = []

        def after_step(record, run=run, history=history):
            history.append((record.index, record.do, leaf_snapshot(run.machine)))
            if on_step is not None:
                on_step(record)
        run.run(after_step)
        out.append(PolicyRun(policy, run, policy_summary(run.machine), history))
    return out


def holds_poison(runs: list[PolicyRun]) -> bool:
    """Did any run poison anything (hardware poison, a memory_failure call, a driver record)?"""
    from . import memory_failure_of

    return any(memory_failure_of(r.run.machine).outcomes or memory_failure_of(r.run.machine).hardware.poisoned_pfns()
               for r in runs)


def render_table(runs: list[PolicyRun], own_policy: str | None = None) -> str:
    rows: list[tuple[str, list[str]]] = []
    for key, label in SUMMARY_ROWS:
        cells = [format_bytes(r.summary[key]) if key.endswith("_bytes") else str(r.summary[key]) for r in runs]
        rows.append((label, cells))
    kinds = sorted({k for r in runs for k in r.summary["signal_kinds"]})
    for kind in kinds:
        rows.append((f"  {kind}", [str(r.summary["signal_kinds"].get(kind, 0)) for r in runs]))
    rows.append(("consumption-loop reports", [str(r.summary["consumption_loops"]) for r in runs]))
    w0 = max(len(label) for label, _ in rows + [("policy", [])])
    widths = [max(len(r.policy), *(len(cells[i]) for _, cells in rows)) for i, r in enumerate(runs)]
    lines = [f"{'policy':<{w0}}  " + "  ".join(f"{r.policy:>{w}}" for r, w in zip(runs, widths))]
    lines.append("-" * len(lines[0]))
    for label, cells in rows:
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    lines.append("each column ran the whole scenario under the policy it names"
                 + (f" (the file's own policy, {own_policy}, was set aside)" if own_policy else ""))
    return "\n".join(lines) + "\n"
