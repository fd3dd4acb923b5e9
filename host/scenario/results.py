"""Running scenarios as tests: one ScenarioResult per file, with the expectations that failed,
the input error that stopped it, or the difference from its golden trace.

    result = run_checked("fixtures/scenarios/demo.toml")
    result.status              # "pass" | "fail" | "error"
    for m in result.mismatches: print(m)

A golden trace is compared as JSON and shown as a unified diff.  ``update_golden`` writes the
new trace but still reports the difference as a failure: a regenerated golden file is a change
for a person to review (``git diff``), never something a run accepts by itself.
"""
from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .expect import Mismatch, check_trace
from .runner import run_scenario
from .spec import Scenario, load_scenario


@dataclass
class ScenarioResult:
    path: Path
    scenario: Scenario | None = None
    trace: object | None = None                 # hugepfn.host.trace.Trace
    mismatches: list[Mismatch] = field(default_factory=list)
    error: str | None = None                    # bad input: the one-line error
    golden_diff: list[str] = field(default_factory=list)
    golden_written: Path | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "fail" if self.mismatches or self.golden_diff else "pass"

    @property
    def expectations(self) -> int:
        return self.scenario.expectations if self.scenario is not None else 0

    def failing_steps(self) -> dict[int, list[Mismatch]]:
        """Mismatches grouped by step index, in step order."""
        out: dict[int, list[Mismatch]] = {}
        for m in self.mismatches:
            out.setdefault(m.step, []).append(m)
        return out


def golden_path(golden: Path, scenario_path: Path) -> Path:
    """``golden`` itself, or ``golden/<scenario name>.json`` when it is a directory."""
    return golden / f"{scenario_path.stem}.json" if golden.is_dir() else golden


def trace_diff(old_text: str, new_text: str, name: str) -> list[str]:
    """Unified diff lines from the recorded golden trace to the new one (both as indented JSON)."""
    def norm(text: str) -> list[str]:
        try:
            return (json.dumps(json.loads(text), indent=1) + "\n").splitlines(keepends=True)
        except ValueError:
            return text.splitlines(keepends=True)
    return [line.rstrip("\n") for line in difflib.unified_diff(norm(old_text), norm(new_text),
                                                                f"a/{name}", f"b/{name}", n=2)]


def _compare_golden(result: ScenarioResult, golden: Path, update: bool) -> None:
    path = golden_path(golden, result.path)
    new_text = result.trace.dumps()
    try:
        old_text = path.read_text()
    except FileNotFoundError:
        old_text = ""
    result.golden_diff = trace_diff(old_text, new_text, str(path)) if old_text != new_text else []
    if result.golden_diff and update:
        path.write_text(new_text)
        result.golden_written = path


def run_checked(path: str | Path, golden: Path | None = None, update_golden: bool = False,
                on_step: Callable | None = None) -> ScenarioResult:
    """Load, run and check one scenario file; input errors end up in ``result.error``."""
    result = ScenarioResult(Path(path))
    start = time.monotonic()
    try:
        result.scenario = load_scenario(path)
        result.trace = run_scenario(result.scenario, on_step)
    except ValueError as exc:                   # ScenarioError and the profiles' errors
        result.error = str(exc)
    except OSError as exc:
        result.error = f"{exc.strerror or exc}: {exc.filename or path}"
    else:
        result.mismatches = check_trace(result.scenario, result.trace)
        if golden is not None:
            _compare_golden(result, golden, update_golden)
    result.seconds = time.monotonic() - start
    return result
