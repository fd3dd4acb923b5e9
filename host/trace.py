"""The trace: one record per scenario step (docs/scenarios.md), as JSON or a readable table.

StepRecord holds what one step did; Trace holds the header, the records and the summary.
All addresses, pfns and offsets are lowercase hex strings with 0x in the JSON form.
"""
from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from typing import Any

from .mm.vm_fault import fault_name

TRACE_VERSION = 1


def hexs(n: int) -> str:
    return f"{n:#x}"


# Where two names share a number, the kernel's own spelling wins (Python's errorcode
# says ENOTSUP for 95; Linux code and logs say EOPNOTSUPP).
_KERNEL_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EWOULDBLOCK: "EAGAIN",
                       errno.EDEADLOCK: "EDEADLK"}


def errno_name(ret: int) -> int | str:
    """0 -> 0; -22 -> "-EINVAL" (the trace's spelling of a syscall result)."""
    if ret == 0:
        return 0
    code = -ret
    return f"-{_KERNEL_ERRNO_NAMES.get(code) or errno.errorcode.get(code, f'E{code}')}"


@dataclass
class StepRecord:
    index: int
    do: str
    args: dict[str, Any]                        # the step's fields, numbers already spelled for JSON
    ret: int | str = 0
    calls: list[tuple[int, int]] | None = None  # access only
    mapped: dict | None = None
    signals: list = field(default_factory=list)     # Signal objects
    log: list[str] = field(default_factory=list)
    zapped: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)   # kind-specific facts (e.g. prctl value)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"index": self.index, "do": self.do}
        out.update(self.args)
        out["ret"] = self.ret
        if self.do == "access":
            out["calls"] = [{"order": o, "ret": fault_name(r)} for o, r in self.calls or []]
            out["mapped"] = self.mapped
        out["signals"] = [s.to_json() for s in self.signals]
        out["log"] = list(self.log)
        if self.zapped:
            out["zapped"] = list(self.zapped)
        out.update(self.extra)
        return out


@dataclass
class Trace:
    kernel: str
    arch: str
    policy: str
    thp: str = "always"
    description: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    summary: dict[str, dict[str, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)     # top-level facts optional models add

    def to_json(self) -> dict:
        out = {"hugepfn_trace": TRACE_VERSION, "kernel": self.kernel, "arch": self.arch,
               "policy": self.policy, "thp": self.thp}
        if self.description:
            out["description"] = self.description
        out["steps"] = [s.to_json() for s in self.steps]
        out["summary"] = self.summary
        out.update(self.extra)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    def render(self) -> str:
        return render_table(self.to_json())


_SKIP = {"index", "do", "ret", "calls", "mapped", "signals", "log", "zapped", "note", "events"}


def _signal_text(s: dict) -> str:
    parts = [s["signo"]]
    if "code" in s:
        parts.append(s["code"])
    parts.append(f"tid {s['tid']}")
    if "addr" in s:
        parts.append(f"addr {s['addr']}")
    if "addr_lsb" in s:
        parts.append(f"lsb {s['addr_lsb']}")
    if not s.get("delivered", True):
        parts.append("(not queued: already pending)")
    return " ".join(parts)


def _plain(v: Any) -> str:
    if v is None:
        return "-"
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def render_table(data: dict) -> str:
    """The human form of a JSON trace: one block per step, details indented under it."""
    lines = [f"hugepfn trace: kernel {data['kernel']}, arch {data['arch']}, "
             f"thp {data.get('thp', '?')}, policy {data['policy']}"]
    if data.get("description"):
        lines.append(data["description"])
    lines.append("")
    rows = []
    for s in data["steps"]:
        args = " ".join(f"{k}={_plain(v)}" for k, v in s.items()
                        if k not in _SKIP and not isinstance(v, (list, dict)))
        rows.append((str(s["index"]), s["do"], args, str(s["ret"]), s))
    w_do = max([len(r[1]) for r in rows] + [4])
    w_args = min(max([len(r[2]) for r in rows] + [4]), 48)
    lines.append(f"{'#':>3}  {'step':<{w_do}}  {'arguments':<{w_args}}  result")
    for idx, do, args, ret, s in rows:
        lines.append(f"{idx:>3}  {do:<{w_do}}  {args:<{w_args}}  {ret}")
        pad = " " * 7
        if s.get("note"):
            lines.append(f"{pad}note: {s['note']}")
        for c in s.get("calls") or []:
            lines.append(f"{pad}call: huge_fault(order {c['order']}) -> {c['ret']}")
        m = s.get("mapped")
        if m:
            lines.append(f"{pad}mapped: {m['level'].upper()} at {m['va']} -> pfn {m['pfn']}")
        for sig in s.get("signals", []):
            lines.append(f"{pad}signal: {_signal_text(sig)}")
        for z in s.get("zapped", []):
            lines.append(f"{pad}zapped: pid {z['pid']} {z['level'].upper()} {z['va']} +{z['length']}")
        for line in s.get("log", []):
            lines.append(f"{pad}log: {line}")
        for ev in s.get("events", []):
            lines.append(f"{pad}event: {ev['device']} BAR{ev['bar']}+{ev['bar_offset']} pfn {ev['pfn']} "
                         f"action {ev['action']} result {ev['result']} signals {ev['signals_sent']}")
    lines.append("")
    lines.append("summary (live leaves per level, faults taken):")
    for pid, c in data.get("summary", {}).items():
        lines.append(f"  pid {pid}: pud {c['pud']}, pmd {c['pmd']}, pte {c['pte']}, faults {c['faults']}")
    return "\n".join(lines) + "\n"
