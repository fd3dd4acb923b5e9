"""Bridge to hugepfn.host.events: one MemoryFailureEvent per handled space, and one per
consumption-loop report.

Every event is built and kept in ``MemoryFailure.events`` (the trace's per-step ``events``), and
published when ``MemoryFailure.publisher`` is set.  A memory_failure() call that a GHES-like
error source makes for one of its records is the exception: the error source builds that
record's event itself (the record names the device, BAR offset and granularity) and keeps and
publishes it the same way.  No event is built where no registered pfn_address_space names a
device: a pfn nobody registered (Ignored) and, before 6.19, "memory outside kernel control"
(the kernel has nothing that says which device the pfn belongs to)."""
from __future__ import annotations

from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE
from ..tasks import BUS_MCEERR_AO, BUS_MCEERR_AR
from .flags import ACTION_NAME

if TYPE_CHECKING:
    from .core import MemoryFailure, MfOutcome
    from .guard import ConsumptionLoop


_SIGBUS, _MCEERR = {"SIGBUS"}, {BUS_MCEERR_AR, BUS_MCEERR_AO}
_SIGNO, _TID, _CODE, _ADDR, _LSB = (attrgetter(name) for name in ("signo", "tid", "code", "addr", "addr_lsb"))


def _space_fields(space, pfn: int) -> dict | None:
    dev = space.owner
    bdf = getattr(getattr(dev, "pdev", None), "bdf", None)
    if bdf is None or space.region is None or not 0 <= space.region <= 5:
        return None
    return {"pfn": pfn, "device": bdf, "bar": space.region, "bar_offset": (pfn - space.start) << PAGE_SHIFT}


def signal_summaries(signals: list) -> tuple:
    """The memory-error SIGBUSes of ``signals`` as an event lists them (at most 1024; the ones
    past that are never built: 10,000 signalled VMAs make 10,000 signals)."""
    from hugepfn.host.events import MAX_SIGNAL_SUMMARIES, SignalSummary

    wanted = signals[:MAX_SIGNAL_SUMMARIES]
    if not (set(map(_SIGNO, wanted)) <= _SIGBUS and set(map(_CODE, wanted)) <= _MCEERR):   # (all are, as a rule)
        wanted = list(islice((s for s in signals if s.signo == "SIGBUS" and s.code in _MCEERR), MAX_SIGNAL_SUMMARIES))
    return SignalSummary.many(list(map(_TID, wanted)), list(map(_CODE, wanted)), list(map(_ADDR, wanted)),
                              list(map(_LSB, wanted)))


def consumption_count(mf: "MemoryFailure", pfn: int) -> int:
    """Accesses that consumed ``pfn`` so far, over every process."""
    return mf.guard.count_over(mf.machine.tasks.processes, pfn)


def keep(mf: "MemoryFailure", event, publisher=None):
    """Publish ``event`` (on ``publisher``, else the model's own, if any) and keep it in
    ``mf.events``; returns the event as kept (stamped when it was published)."""
    publisher = publisher if publisher is not None else mf.publisher
    if publisher is not None:
        event = publisher.publish(event)
    mf.events.append(event)
    return event


def publish_outcome(mf: "MemoryFailure", out: "MfOutcome") -> None:
    from hugepfn.host.events import MemoryFailureEvent

    summaries = signal_summaries(out.signals)
    for space, action in zip(out.spaces, out.actions):
        fields = _space_fields(space, out.pfn)
        if fields is None:
            continue
        out.events.append(keep(mf, MemoryFailureEvent(
            **fields, granularity=PAGE_SIZE, policy=mf.policy.name, action=action,
            result=ACTION_NAME[out.result], signals_sent=len(out.signals), signals=summaries,
            consumption_count=consumption_count(mf, out.pfn), profile=mf.profile.name)))


def publish_loop(mf: "MemoryFailure", loop: "ConsumptionLoop") -> None:
    from hugepfn.host.events import MemoryFailureEvent

    for space in mf.registry.lookup(loop.pfn):
        fields = _space_fields(space, loop.pfn)
        if fields is None:
            continue
        keep(mf, MemoryFailureEvent(
            **fields, granularity=PAGE_SIZE, policy=mf.policy.name, action="consumption-loop",
            result="Recovered", consumption_count=loop.count, profile=mf.profile.name))
