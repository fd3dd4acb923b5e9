"""Memory-failure events: encode/decode rate (struct fast path and the pyroute2 reference), and
publish -> receive latency over netlink (a private netns, when root) and the unix fallback.

Events are rare (one per poisoned page), so these figures say "cheap enough", not a target.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from hugepfn.host import events
from hugepfn.host.events import (BUS_MCEERR_AR, MemoryFailureEvent, SignalSummary, decode, decode_reference,
                                 encode, encode_reference)


def _event(n: int, signals: int = 2) -> MemoryFailureEvent:
    return MemoryFailureEvent(
        seq=n, timestamp_ns=time.time_ns(), pfn=0x3800000 + n, device="0000:41:00.0", bar=2,
        bar_offset=n * 4096, granularity=4096, policy="upstream", action="signalled",
        result="Recovered", signals_sent=signals,
        signals=[SignalSummary(tid=1000 + i, code=BUS_MCEERR_AR, addr=0x7F0000000000 + i * 4096)
                 for i in range(signals)],
        consumption_count=1, profile="6.19")


def _rate(label: str, fn, seconds: float = 0.4) -> None:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    print(f"{label:<44} {count / elapsed:>10,.0f} /s  ({elapsed / count * 1e6:,.1f} us each)")


def _latency(label: str, pub, sub, rounds: int = 300) -> None:
    samples = []
    for n in range(rounds):
        start = time.perf_counter()
        pub.publish(_event(n))
        assert sub.receive(5) is not None
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(f"{label:<44} median {samples[len(samples) // 2] * 1e6:,.0f} us, "
          f"p99 {samples[int(len(samples) * 0.99)] * 1e6:,.0f} us over {rounds}")


def main() -> None:
    small, big = _event(1), _event(1, signals=64)
    small_bytes, big_bytes = encode(small), encode(big)
    for kind, enc, dec in (("struct", encode, decode), ("pyroute2", encode_reference, decode_reference)):
        _rate(f"{kind} encode (2 signals, {len(small_bytes)} B)", lambda: enc(small))
        _rate(f"{kind} decode (2 signals, {len(small_bytes)} B)", lambda: dec(small_bytes))
        _rate(f"{kind} encode (64 signals, {len(big_bytes)} B)", lambda: enc(big))
        _rate(f"{kind} decode (64 signals, {len(big_bytes)} B)", lambda: dec(big_bytes))
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "events"
        with events.subscriber("unix", events_dir=where) as sub, \
             events.publisher("unix", events_dir=where) as pub:
            _latency("publish -> receive, unix fallback", pub, sub)
    if os.geteuid() != 0:
        print("publish -> receive, netlink: skipped (needs root for a private netns)")
        return
    from pyroute2 import netns

    name = f"hpfn-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        with events.subscriber("netlink", netns=name) as sub, \
             events.publisher("netlink", netns=name) as pub:
            _latency("publish -> receive, netlink (private netns)", pub, sub)
    finally:
        netns.remove(name)


if __name__ == "__main__":
    main()
