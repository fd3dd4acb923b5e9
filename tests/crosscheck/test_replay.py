"""The crosscheck's comparison logic on every CI run, without a guest.

tests/crosscheck/recorded/<kernel release>/<scenario>.json.gz is what a real kernel's guest
printed for one bundled scenario (`make crosscheck-record`: the probe's lines, the BAR
placement, the Oops if the kernel crashed).  Each is replayed through the converter
(hugepfn.crosscheck.observe) and the diff (hugepfn.crosscheck.compare) against today's model:
every step must agree, as it did when it was recorded.  A model change that the kernel does
not back fails here.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hugepfn.crosscheck.runner import replay
from hugepfn.fixtures import SCENARIOS

RECORDED = Path(__file__).resolve().parent / "recorded"
CASES = sorted(RECORDED.glob("*/*.json.gz"))
# the kernel-global model state after each prefix of a recorded boot (replay's memo)
BOOT_STATES: dict = {}


def load(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def test_there_is_recorded_kernel_output_for_every_crosschecked_series():
    series = {load(p)["series"] for p in CASES}
    assert {"6.1", "6.12", "6.16", "6.17", "6.18", "7.2", "7.3"} <= series


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name[:-8]}" for p in CASES])
def test_recorded_kernel_output_agrees_with_the_model(path):
    raw = load(path)
    result = replay(raw, SCENARIOS / f"{raw['scenario']}.toml", BOOT_STATES)
    assert result.error is None
    bad = [(v.index, v.do, [(d.field, d.kernel, d.model) for d in v.differences])
           for v in result.verdicts if not v.agrees]
    assert bad == []
    assert result.verdicts, "a recorded scenario compares at least one step"
