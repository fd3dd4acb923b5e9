"""What a scenario step expects: the optional ``[step.expect]`` table, and checking it against
the step's record in the trace.

    [[step]]
    do   = "access"
    tid  = 4242
    addr = 0x7f0000201000
    [step.expect]
    ret     = "VM_FAULT_NOPAGE"
    calls   = [[18, "VM_FAULT_FALLBACK"], [9, "VM_FAULT_NOPAGE"]]
    mapped  = { level = "pmd", va = "0x7f0000200000", pfn = 0x100200 }
    signals = []

The keys mirror the trace (docs/scenarios.md): ``ret``, ``calls`` (access only: a list of
[order, "VM_FAULT_..."]), ``mapped`` (access only: ``{level, va, pfn}``, any of them, or false
for nothing mapped), ``signals`` (the exact list; each entry names only the fields it cares
about among tid, signo, code, addr, addr_lsb, delivered; code "SI_KERNEL" is a plain
force_sig without a code), ``log`` (the exact list of lines), ``log_has`` (lines that must be
among them), ``events`` (the memory-failure events the step published, entries naming any of
the event's fields).  Numbers may be TOML integers or strings ("0x7f0000200000", "2M").

The trace is the single record of what happened, so a check reads the step's JSON record,
the same data a person, a golden file and a plot read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hugepfn.abi.sizes import parse_size

from .errors import ScenarioError

EXPECT_KEYS = ("ret", "calls", "mapped", "signals", "log", "log_has", "events")
ACCESS_ONLY = ("calls", "mapped")
SIGNAL_FIELDS = {"tid": "int", "signo": "str", "code": "str", "addr": "num", "addr_lsb": "int", "delivered": "bool"}
MAPPED_FIELDS = {"level": "str", "va": "num", "pfn": "num"}
EVENT_FIELDS = {"pfn": "num", "device": "str", "bar": "int", "bar_offset": "num", "granularity": "num",
                "policy": "str", "action": "str", "result": "str", "signals_sent": "int",
                "consumption_count": "int", "profile": "str"}
# A plain force_sig(SIGBUS) has si_code SI_KERNEL; the trace writes it without a code.
PLAIN_CODE = "SI_KERNEL"


@dataclass(frozen=True)
class Mismatch:
    """One expectation that did not hold: where (step index and kind), which field, both values
    in the trace's spelling."""
    step: int
    kind: str
    field: str
    expected: Any
    got: Any

    @property
    def where(self) -> str:
        return f"step {self.step} ({self.kind})"

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: expected {show(self.expected)}, got {show(self.got)}"


def show(value: Any) -> str:
    """A compact, TOML-like spelling of an expected or recorded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


# -- parsing ---------------------------------------------------------------------------------------
def _typed(value: Any, kind: str, where: str) -> Any:
    if kind == "num":
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ScenarioError(f"{where}: expected an integer, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ScenarioError(f"{where}: expected a string, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ScenarioError(f"{where}: expected true or false, got {value!r}")
    return value


def _entry(raw: Any, schema: dict[str, str], where: str) -> dict:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table such as {{ {next(iter(schema))} = ... }}, got {raw!r}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ScenarioError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(schema)})")
    return {k: _typed(v, schema[k], f"{where}.{k}") for k, v in raw.items()}


def _entries(raw: Any, schema: dict[str, str], where: str) -> list[dict]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of tables, got {raw!r}")
    return [_entry(item, schema, f"{where}[{i}]") for i, item in enumerate(raw)]


def _lines(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ScenarioError(f"{where}: expected a list of strings, got {raw!r}")
    return list(raw)


def _calls(raw: Any, where: str) -> list[tuple[int, str]]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of [order, \"VM_FAULT_...\"], got {raw!r}")
    out = []
    for i, call in enumerate(raw):
        if isinstance(call, dict):
            call = [call.get("order"), call.get("ret")]
        if (not isinstance(call, list) or len(call) != 2 or call[0] not in (0, 9, 18)
                or isinstance(call[0], bool) or not isinstance(call[1], str)):
            raise ScenarioError(f"{where}[{i}]: expected [order 0|9|18, \"VM_FAULT_...\"], got {call!r}")
        out.append((call[0], call[1]))
    return out


def _ret(raw: Any, where: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ScenarioError(f"{where}: expected 0, an errno name such as \"-EINVAL\" or a VM_FAULT_* result, "
                            f"got {raw!r}")
    if isinstance(raw, int) and raw < 0:
        from ..trace import errno_name
        return str(errno_name(raw))
    return str(raw)


def parse_expect(raw: Any, kind: str, where: str) -> dict[str, Any]:
    """Check a step's ``expect`` table; numbers become ints.  ScenarioError names the place."""
    where = f"{where}: expect"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table ([step.expect]), got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        here = f"{where}.{key}"
        if key not in EXPECT_KEYS:
            raise ScenarioError(f"{where}: unknown key {key!r} (expected {', '.join(EXPECT_KEYS)})")
        if key in ACCESS_ONLY and kind != "access":
            raise ScenarioError(f"{here}: only an access step has {key}")
        if key == "ret":
            out[key] = _ret(value, here)
        elif key == "calls":
            out[key] = _calls(value, here)
        elif key == "mapped":
            out[key] = False if value is False else _entry(value, MAPPED_FIELDS, here)
        elif key == "signals":
            out[key] = _entries(value, SIGNAL_FIELDS, here)
        elif key == "events":
            out[key] = _entries(value, EVENT_FIELDS, here)
        else:
            out[key] = _lines(value, here)
    return out


# -- checking --------------------------------------------------------------------------------------
def _same(want: Any, got: Any, kind: str) -> bool:
    if kind == "num":
        if isinstance(got, str):
            try:
                got = int(got, 0)
            except ValueError:
                return False
        return isinstance(got, int) and not isinstance(got, bool) and got == want
    return type(got) is type(want) and got == want


def _entry_matches(want: dict, got: dict, schema: dict[str, str]) -> bool:
    for key, value in want.items():
        if key == "code" and value == PLAIN_CODE:
            if "code" in got:
                return False
            continue
        if key not in got or not _same(value, got[key], schema[key]):
            return False
    return True


def _spelled(entry: dict, schema: dict[str, str]) -> dict:
    """An expected entry as the trace spells it (numbers in hex), for messages."""
    return {k: (f"{v:#x}" if schema[k] == "num" else v) for k, v in entry.items()}


def _trimmed(got: dict, want: dict) -> dict:
    """The recorded entry cut to the fields the expectation names (what a reader compares)."""
    keys = [k for k in got if k in want] or list(got)
    return {k: got[k] for k in keys}


def _check_entries(field: str, want: list[dict], got: list[dict], schema: dict[str, str]) -> list[tuple]:
    if len(want) == len(got) and all(_entry_matches(w, g, schema) for w, g in zip(want, got)):
        return []
    if len(want) != len(got):
        return [(field, [_spelled(w, schema) for w in want], [_trimmed(g, w) for g, w in zip(got, want)]
                 + got[len(want):])]
    return [(f"{field}[{i}]", _spelled(w, schema), _trimmed(g, w))
            for i, (w, g) in enumerate(zip(want, got)) if not _entry_matches(w, g, schema)]


def check_record(expect: dict[str, Any], record: dict) -> list[tuple[str, Any, Any]]:
    """(field, expected, got) for each expectation ``record`` (a step's JSON) does not meet."""
    out: list[tuple[str, Any, Any]] = []
    for key, want in expect.items():
        if key == "ret":
            if str(record.get("ret")) != want:
                out.append((key, want, record.get("ret")))
        elif key == "calls":
            got = [(c["order"], c["ret"]) for c in record.get("calls") or []]
            if got != want:
                out.append((key, [list(c) for c in want], [list(c) for c in got]))
        elif key == "mapped":
            got = record.get("mapped")
            if want is False:
                if got is not None:
                    out.append((key, False, got))
            elif got is None or not _entry_matches(want, got, MAPPED_FIELDS):
                out.append((key, _spelled(want, MAPPED_FIELDS), got if got is None else _trimmed(got, want)))
        elif key == "signals":
            out += _check_entries(key, want, record.get("signals", []), SIGNAL_FIELDS)
        elif key == "events":
            out += _check_entries(key, want, record.get("events", []), EVENT_FIELDS)
        elif key == "log":
            got = record.get("log", [])
            if got != want:
                out.append((key, want, got))
        elif key == "log_has":
            got = record.get("log", [])
            missing = [line for line in want if line not in got]
            if missing:
                out.append((key, missing, got))
    return out


def check_trace(scenario, trace) -> list[Mismatch]:
    """Every expectation of ``scenario``'s steps that its ``trace`` does not meet, in step order."""
    records = {rec.index: rec for rec in trace.steps}
    out: list[Mismatch] = []
    for step in scenario.steps:
        if not step.expect:
            continue
        rec = records.get(step.index)
        if rec is None:
            out.append(Mismatch(step.index, step.kind, "step", "a record", None))
            continue
        for field, want, got in check_record(step.expect, rec.to_json()):
            out.append(Mismatch(step.index, step.kind, field, want, got))
    return out
