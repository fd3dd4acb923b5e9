"""Scenario step kinds of the memory-failure model (docs/scenarios.md): poison,
memory_failure, hard_offline_page, register, unregister, and the extensions of the format
repair, collapse, consumption_guard, corrupt_pfn, unpoison_pfn, madvise_hwpoison (STEP_KINDS).

``record_memory_failure`` wraps every handler (the scenario package's too; the wiring applies
it) so that a step records the memory_failure_event trace lines it produced (``trace_events``)
and the memory-failure events it published (``events``), and so that after a kernel panic
(vm.memory_failure_recovery = 0) the machine runs nothing more: later steps are recorded with
``skipped`` and change nothing.  ``poison_summary`` is the run finisher that adds the
per-policy summary to traces of runs that handled poison.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ..scenario.errors import ScenarioError
from ..scenario.fields import Field
from ..scenario.steps import StepKind, check_current, check_mf_flags, check_region, device_field, step_kind
from .flags import KernelPanic, parse_mf_flags
from .inject import corrupt_pfn, hard_offline_page, madvise_hwpoison, unpoison_pfn
from .policies.repair import collapse, repair_pfn

if TYPE_CHECKING:
    from ..scenario.runner import ScenarioRun
    from ..scenario.spec import Step
    from .core import MemoryFailure


def _mf(run: "ScenarioRun") -> "MemoryFailure":
    return run.machine.memory_failure


def _current(run: "ScenarioRun", value: Any):
    return None if value == "kworker" else run.machine.tasks.thread(value)


# -- declared kinds ------------------------------------------------------------------------------
def _step_pfn(run: "ScenarioRun", step: "Step") -> int | None:
    """The pfn a (device, region, offset) step names, recorded in the trace; None if outside."""
    f = step.fields
    pfn = run.machine.device(f["device"]).region_pfn(f["region"], f["offset"])
    if pfn is not None:
        run.record.extra["pfn"] = f"{pfn:#x}"
    return pfn


def do_poison(run: "ScenarioRun", step: "Step") -> int:
    pfn = _step_pfn(run, step)
    if pfn is None:
        return -errno.EINVAL
    _mf(run).hardware.poison(pfn)
    return 0


def do_memory_failure(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return _mf(run).memory_failure(f["pfn"], parse_mf_flags(f["flags"]), _current(run, f["current"]))


def do_hard_offline_page(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    phys = f["phys"]
    if f.get("device") is not None:
        bar = run.machine.device(f["device"]).pdev.bar(f["bar"] if f.get("bar") is not None else 0)
        if bar is None:
            return -22          # the writer named a BAR the device does not have
        phys += bar.phys
    ret = hard_offline_page(_mf(run), phys, run.machine.tasks.thread(f["current"]))
    return ret if ret < 0 else 0     # the write returns the byte count on success


def _spaces(run: "ScenarioRun") -> dict:
    return run.machine.extensions.setdefault("memory_failure_step_spaces", {})


def do_register(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    dev = run.machine.device(f["device"])
    space = dev.pfn_address_space(f["region"], f["callback"])
    if space is None:
        return -errno.EINVAL
    ret = run.machine.register_pfn_address_space(space)
    if ret == 0:
        _spaces(run)[(f["device"], f["region"])] = space
    return ret


def do_unregister(run: "ScenarioRun", step: "Step") -> int:
    from .registry import RegistryCorruption

    f = step.fields
    dev = run.machine.device(f["device"])
    space = _spaces(run).pop((f["device"], f["region"]), None)
    if space is None:
        for s in list(dev.registered):
            if s.region == f["region"]:
                space = s
                dev.registered.remove(s)        # the driver will not unregister it again at close
                break
    if space is None:
        space = dev.pfn_address_space(f["region"])
        if space is None:
            return -errno.EINVAL
    try:
        run.machine.unregister_pfn_address_space(space)
    except RegistryCorruption as exc:
        raise ScenarioError(f"{step.where}: {exc}") from None
    return 0


# -- extension kinds -----------------------------------------------------------------------------------
def do_repair(run: "ScenarioRun", step: "Step") -> int:
    pfn = _step_pfn(run, step)
    if pfn is None:
        return -errno.EINVAL
    run.record.extra["was_poisoned"] = repair_pfn(_mf(run), pfn)
    return 0


def do_collapse(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    mm = run.machine.tasks.process(f["pid"]).mm
    done = collapse(_mf(run), mm, f["addr"], f["addr"] + f["length"])
    run.record.extra["collapsed"] = [{"level": level, "va": f"{va:#x}"} for level, va in done]
    return 0


def do_consumption_guard(run: "ScenarioRun", step: "Step") -> int:
    try:
        _mf(run).guard.threshold = step.fields["threshold"]
    except ValueError:
        return -errno.EINVAL
    return 0


def do_corrupt_pfn(run: "ScenarioRun", step: "Step") -> int:
    return corrupt_pfn(_mf(run), step.fields["pfn"])


def do_unpoison_pfn(run: "ScenarioRun", step: "Step") -> int:
    return unpoison_pfn(_mf(run), step.fields["pfn"])


def do_madvise_hwpoison(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return madvise_hwpoison(_mf(run), run.machine.tasks.thread(f["tid"]), f["addr"], f["length"])


# -- wrapping: trace events, panic ------------------------------------------------------------------
def record_memory_failure(kind_name: str, handler):
    """The step wrapper: trace events and published events of the step, and nothing after a panic."""

    def wrapped(run: "ScenarioRun", step: "Step"):
        mf = _mf(run)
        rec = run.record
        if mf.panicked is not None:
            rec.extra["skipped"] = "kernel panicked"
            if rec.do == "access":
                rec.calls = []
                return "0"
            return 0
        mark, events_mark = len(mf.trace), len(mf.events)
        try:
            ret = handler(run, step)
        except KernelPanic as panic:
            rec.extra["panic"] = panic.message
            ret = "0" if rec.do == "access" else 0
        if len(mf.trace) != mark:
            rec.extra["trace_events"] = mf.trace.lines[mark:]
        if len(mf.events) != events_mark:
            rec.extra["events"] = [event.to_trace() for event in mf.events[events_mark:]]
        return ret

    wrapped.__name__ = getattr(handler, "__name__", kind_name)
    return wrapped


def poison_summary(run: "ScenarioRun") -> None:
    """Run finisher: the per-policy summary, for runs that handled poison."""
    from .summary import policy_summary

    mf = _mf(run)
    if mf.outcomes or mf.hardware.poisoned_pfns() or mf.drivers:
        summary = policy_summary(run.machine)
        del summary["policy"]                   # the trace header says it
        run.trace.extra["poison_summary"] = summary


def _region_field() -> Field:
    return Field("region", "int", check=check_region)


STEP_KINDS: tuple[StepKind, ...] = (
    step_kind("poison", (device_field(), _region_field(), Field("offset")), do_poison,
              doc="the hardware marks memory bad (no report yet)"),
    step_kind("memory_failure", (Field("pfn"), Field("flags", "strlist", required=False, default=[],
                                                     check=check_mf_flags),
                                 Field("current", "any", required=False, default="kworker", check=check_current)),
              do_memory_failure, thread_field="current", doc="memory_failure() as called by an error handler"),
    step_kind("hard_offline_page", (Field("phys"), Field("current", "int"),
                                    Field("device", "str", required=False, default=None),
                                    Field("bar", "int", required=False, default=None,
                                          check=lambda v: None if 0 <= v <= 5 else f"must be 0..5, got {v}")),
              do_hard_offline_page, thread_field="current",
              doc="write to /sys/devices/system/memory/hard_offline_page; with device and bar, phys is "
                  "an offset into that BAR (wherever firmware placed it)"),
    # `register` has an optional `callback` field ("literal" | "fixed"): an extension.
    step_kind("register", (device_field(), _region_field(),
                           Field("callback", "str", required=False, default="literal", choices=("literal", "fixed"))),
              do_register, doc="register_pfn_address_space for a region's pfns"),
    step_kind("unregister", (device_field(), _region_field()), do_unregister,
              doc="unregister_pfn_address_space for a region's pfns"),
    step_kind("repair", (device_field(), _region_field(), Field("offset")), do_repair,
              doc="the device reports a poisoned page repaired (extension)"),
    step_kind("collapse", (Field("pid", "int"), Field("addr"), Field("length")), do_collapse,
              doc="retract small page tables of clean blocks so huge leaves can return (extension)"),
    step_kind("consumption_guard", (Field("threshold", "int"),), do_consumption_guard,
              doc="threshold of the per-process consumption-loop guard (extension)"),
    step_kind("corrupt_pfn", (Field("pfn"),), do_corrupt_pfn, doc="write to debugfs hwpoison/corrupt-pfn (extension)"),
    step_kind("unpoison_pfn", (Field("pfn"),), do_unpoison_pfn,
              doc="write to debugfs hwpoison/unpoison-pfn (extension)"),
    step_kind("madvise_hwpoison", (Field("tid", "int"), Field("addr"), Field("length")), do_madvise_hwpoison,
              thread_field="tid", doc="madvise(MADV_HWPOISON) (extension)"),
)
