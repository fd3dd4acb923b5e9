"""The generic code names no variant driver: nvgrace-gpu is written against the same driver
contract as a third-party driver, so `grep -rn nvgrace` over the generic code finds nothing.

Generic code: the shared ABI, the device, the host model, the CLI, the pytest plugin.  The nvgrace-gpu driver
itself may name itself; tests, fixtures, docs, benchmarks, the e2e guests and the crosscheck
(which drives the real kernel's nvgrace-gpu module in a guest) are not generic code."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("abi", "device", "host", "cli", "testing")
THE_DRIVER = "host/drivers/nvgrace_gpu.py"


def test_grep_finds_nvgrace_only_in_its_own_driver():
    out = subprocess.run(["grep", "-rni", "--include=*.py", "nvgrace", *GENERIC], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    hits = [line for line in out.stdout.splitlines() if not line.startswith(f"{THE_DRIVER}:")]
    assert hits == []
