"""run_scenario for tests: a scenario file (or the name of a bundled one) -> its Trace."""
from __future__ import annotations

import os
from pathlib import Path

from hugepfn.fixtures import SCENARIOS
from hugepfn.host.scenario import run_scenario as _run


def run_scenario(path: str | os.PathLike):
    """Run a scenario TOML file and return the trace (``trace.steps``: StepRecords with ret,
    signals, log, zapped; ``trace.summary``; ``trace.to_json()``).  A bare name such as
    "poison-upstream" runs the bundled fixtures/scenarios/<name>.toml."""
    candidate = Path(path)
    if not candidate.exists() and candidate.suffix == "" and (SCENARIOS / f"{candidate}.toml").exists():
        candidate = SCENARIOS / f"{candidate}.toml"
    if not candidate.exists():
        raise FileNotFoundError(f"no scenario file {os.fspath(path)!r} (bundled: "
                                f"{', '.join(sorted(p.stem for p in SCENARIOS.glob('*.toml')))})")
    return _run(candidate)
