"""The step-by-step diff of the model's trace against the kernel's (hugepfn.crosscheck.observe).

Only what the kernel can show is compared, field by field, for every step:

* ``ret`` (every step), ``calls`` and ``mapped`` (accesses), ``accesses``, ``faults`` and
  ``stopped_at`` (touches), ``value`` (prctl queries);
* ``signals``: the signals the model says were delivered (an identical non-RT signal that
  was already pending is not queued, so no handler can see it), in order per thread;
  a SIGKILL is compared by process (the probe sees the process die, not which thread the
  kernel picked);
* ``log``: the kernel log lines of the step, exactly, in order.

A Verdict per step lists the fields that differ with both sides' values; the model is
wrong wherever they do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

STEP_FIELDS = {"access": ("ret", "calls", "mapped", "signals", "log"),
               "touch": ("ret", "accesses", "faults", "stopped_at", "signals", "log"),
               "prctl": ("ret", "value", "signals", "log")}
DEFAULT_FIELDS = ("ret", "signals", "log")


@dataclass
class Difference:
    field: str
    kernel: Any
    model: Any


@dataclass
class Verdict:
    index: int
    do: str
    compared: tuple[str, ...]
    differences: list[Difference] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.differences


def _signals(sigs: list[dict], pid_of: dict[int, int]) -> list[dict]:
    out = []
    for s in sigs:
        if s.get("delivered") is False:
            continue
        if s["signo"] == "SIGKILL":
            out.append({"pid": pid_of.get(s["tid"], s["tid"]), "signo": "SIGKILL"})
            continue
        out.append({k: v for k, v in s.items() if k != "delivered"})
    return sorted(out, key=lambda s: (s.get("tid", s.get("pid")), s["signo"]))


def _kernel_signals(sigs: list[dict]) -> list[dict]:
    out = []
    for s in sigs:
        if s["signo"] == "SIGKILL":
            out.append({"pid": s["tid"], "signo": "SIGKILL"})
        else:
            out.append(dict(s))
    return sorted(out, key=lambda s: (s.get("tid", s.get("pid")), s["signo"]))


def _norm(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


_HEX_TOKEN = re.compile(r"\b(?:0x)?[0-9a-f]{8,16}\b")


def log_equal(model: list[str], kernel: list[str]) -> bool:
    """Equal line by line; ``<ptr>`` in a model line stands for an address the kernel prints
    that is random per boot (a hashed %p, a KASLR'd address): any hex token matches it."""
    if len(model) != len(kernel):
        return False
    for mine, theirs in zip(model, kernel):
        if "<ptr>" not in mine:
            if mine != theirs:
                return False
            continue
        pattern = "".join(re.escape(part) if i % 2 == 0 else r"(?:0x)?[0-9a-f]{8,16}"
                          for i, part in enumerate(re.split(r"(<ptr>)", mine)) if part != "<ptr>" or i % 2)
        if not re.fullmatch(pattern, theirs):
            return False
    return True


def crash_matches(model: dict, kernel: dict) -> bool:
    """The model's crash: its first line (``<ptr>`` as in log_equal) and its call-trace
    functions, which must appear in that order among the kernel's (RIP first)."""
    if not log_equal([model["first_line"]], [kernel.get("first_line", "")]):
        return False
    funcs = iter(kernel.get("call_trace", []))
    return all(any(f == g for g in funcs) for f in model["call_trace"])


def compare_step(model: dict, kernel: dict, pid_of: dict[int, int]) -> Verdict:
    fields = STEP_FIELDS.get(model["do"], DEFAULT_FIELDS)
    if "crash" in model or "crash" in kernel:
        fields = ("ret", "crash")
    verdict = Verdict(model["index"], model["do"], fields)
    for name in fields:
        if name == "crash":
            mine, theirs = model.get("crash"), kernel.get("crash")
            if mine is None or theirs is None or not crash_matches(mine, theirs):
                verdict.differences.append(Difference(name, theirs, mine))
            continue
        if name == "log":
            mine, theirs = model.get("log", []), kernel.get("log", [])
            if not log_equal(mine, theirs):
                verdict.differences.append(Difference(name, theirs, mine))
            continue
        if name == "signals":
            mine, theirs = _signals(model.get("signals", []), pid_of), _kernel_signals(kernel.get("signals", []))
        elif name == "value":
            mine, theirs = model.get("value"), kernel.get("value")
        else:
            mine, theirs = _norm(model.get(name)), _norm(kernel.get(name))
        if mine != theirs:
            verdict.differences.append(Difference(name, theirs, mine))
    return verdict


def compare(model_trace: dict, kernel_trace: dict, pid_of: dict[int, int]) -> list[Verdict]:
    kernel_steps = {s["index"]: s for s in kernel_trace["steps"]}
    out = []
    for step in model_trace["steps"]:
        theirs = kernel_steps.get(step["index"], {"index": step["index"], "do": step["do"], "ret": "not run"})
        out.append(compare_step(step, theirs, pid_of))
    return out


def _short(value: Any, width: int = 60) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "order" in value[0]:
            text = ", ".join(f"{c['order']}:{c['ret'].replace('VM_FAULT_', '')}" for c in value)
        elif value and isinstance(value[0], dict):
            text = "; ".join(" ".join(f"{v}" for v in s.values()) for s in value)
        else:
            text = " | ".join(map(str, value))
        text = f"[{text}]"
    elif isinstance(value, dict):
        text = " ".join(str(v) for v in value.values())
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def render(verdicts: list[Verdict], scenario: str, kernel: str) -> list[str]:
    """The table: one row per step, then one row per differing field."""
    lines = [f"{scenario} on {kernel}:"]
    for v in verdicts:
        mark = "agree" if v.agrees else "DIFFER"
        lines.append(f"  {v.index:>3} {v.do:<18} {mark}")
        for d in v.differences:
            lines.append(f"        {d.field}: kernel {_short(d.kernel)}")
            lines.append(f"        {' ' * len(d.field)}  model  {_short(d.model)}")
    return lines
