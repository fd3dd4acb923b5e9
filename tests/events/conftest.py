"""Fixtures for the event tests: private network namespaces, private fallback dirs,
and child processes that run inside a namespace (the test process never moves)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hugepfn.host.events import BUS_MCEERR_AO, BUS_MCEERR_AR, MemoryFailureEvent, SignalSummary

HERE = Path(__file__).resolve().parent
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="network namespaces and netlink groups need root")


@pytest.fixture
def private_netns():
    """A uniquely named network namespace, removed afterwards (parallel runs never meet)."""
    if not IS_ROOT:
        pytest.skip("creating a network namespace needs root")
    from pyroute2 import netns

    name = f"hpfn-ev-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def events_dir(tmp_path) -> Path:
    """A private unix-fallback directory (never the user's real one)."""
    return tmp_path / "events"


def child_env(events_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("XDG_RUNTIME_DIR", None)
    if events_dir is not None:
        env["HUGEPFN_EVENTS_DIR"] = str(events_dir)
    return env


def spawn(argv: list[str], *, netns: str | None = None, events_dir: Path | None = None,
          preexec_fn=None) -> subprocess.Popen:
    """Start `argv` (python scripts/modules), inside `netns` when given, with pipes."""
    if netns is not None:
        argv = [sys.executable, str(HERE / "nsexec.py"), netns, *argv]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(events_dir),
                            preexec_fn=preexec_fn)


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *args]


def make_event(n: int, **overrides) -> MemoryFailureEvent:
    """A distinct, fully specified event (seq and timestamp fixed so results are exact)."""
    fields = dict(
        seq=1000 + n,
        timestamp_ns=1_763_765_000_000_000_000 + n * 1_000_123,
        pfn=0x3800000 + n,
        device="0000:41:00.0",
        bar=2,
        bar_offset=n * 4096,
        granularity=4096,
        policy=("upstream", "hard-offline", "split")[n % 3],
        action=("signalled", "zapped", "split")[n % 3],
        result="Recovered",
        signals_sent=2,
        signals=(SignalSummary(tid=4000 + n, code=BUS_MCEERR_AR, addr=0x7F3A00000000 + n * 4096),
                 SignalSummary(tid=5000 + n, code=BUS_MCEERR_AO, addr=0x7F3B00000000 + n * 4096)),
        consumption_count=n,
        profile="6.19",
    )
    fields.update(overrides)
    return MemoryFailureEvent(**fields)
