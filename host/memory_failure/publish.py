"""Bridge to hugepfn.host.events: one MemoryFailureEvent per handled space, and one per
consumption-loop report.  Only used when MemoryFailure.publisher is set (tests and the
scenario runner run without netlink)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE
from ..tasks import BUS_MCEERR_AO, BUS_MCEERR_AR
from .flags import ACTION_NAME

if TYPE_CHECKING:
    from .core import MemoryFailure, MfOutcome
    from .guard import ConsumptionLoop


def _space_fields(space, pfn: int) -> dict | None:
    dev = space.owner
    bdf = getattr(getattr(dev, "pdev", None), "bdf", None)
    if bdf is None or space.region is None or not 0 <= space.region <= 5:
        return None
    return {"pfn": pfn, "device": bdf, "bar": space.region, "bar_offset": (pfn - space.start) << PAGE_SHIFT}


def publish_outcome(mf: "MemoryFailure", out: "MfOutcome") -> None:
    from hugepfn.host.events import MemoryFailureEvent, SignalSummary

    summaries = tuple(SignalSummary(tid=s.tid, code=s.code, addr=s.addr, lsb=s.addr_lsb)
                      for s in out.signals if s.signo == "SIGBUS" and s.code in (BUS_MCEERR_AR, BUS_MCEERR_AO))
    for space, action in zip(out.spaces, out.actions):
        fields = _space_fields(space, out.pfn)
        if fields is None:
            continue
        mf.publisher.publish(MemoryFailureEvent(
            **fields, granularity=PAGE_SIZE, policy=mf.policy.name, action=action,
            result=ACTION_NAME[out.result], signals_sent=len(out.signals), signals=summaries[:1024],
            consumption_count=0, profile=mf.profile.name))


def publish_loop(mf: "MemoryFailure", loop: "ConsumptionLoop") -> None:
    if mf.publisher is None:
        return
    from hugepfn.host.events import MemoryFailureEvent

    for space in mf.registry.lookup(loop.pfn):
        fields = _space_fields(space, loop.pfn)
        if fields is None:
            continue
        mf.publisher.publish(MemoryFailureEvent(
            **fields, granularity=PAGE_SIZE, policy=mf.policy.name, action="consumption-loop",
            result="Recovered", consumption_count=loop.count, profile=mf.profile.name))
