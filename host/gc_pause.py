"""Python's cyclic garbage collector paused around one bulk step of the model."""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Run the body with the cyclic collector off, and restore it after (nested uses keep the
    outermost state).

    Why: a memory_failure() that signals 10,000 VMAs allocates tens of thousands of objects
    that all stay alive (ToKill entries, signals, journal and log records).  Every 700
    allocations start a collection, and the older generations' collections walk every object
    of the machine model, millions with 10,000 registered devices: that costs more than the
    step itself (bench_memory_failure: about 3x the call).  The step makes no reference cycles
    that need the collector, so pausing it loses nothing; the objects are counted as usual
    when it runs again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
