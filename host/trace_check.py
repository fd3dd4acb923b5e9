"""Checking that a trace has the form docs/scenarios.md specifies ("Trace (JSON)").

    python -m hugepfn.host.trace_check TRACE.json [...]      (or - for stdin)
    hugepfn check-trace TRACE.json [...]

It checks form, not truth: field names and types, the lowercase ``0x`` hex spelling of
addresses, pfns, offsets and lengths, ``VM_FAULT_*`` and ``-E*`` result names, fault
orders 0/9/18, mapping levels, signal names and codes, and, for the step kinds this
installation knows, that each of the kind's fields is there, spelled as its type says.
Whether the kernel would have done the same is what the golden traces and the crosscheck
are for.  Every problem is one line naming the place (``steps[3] (access): ret: ...``).
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

HEX = re.compile(r"0x[0-9a-f]+")
ERRNO = re.compile(r"-E[A-Z0-9]+")
VM_FAULT = re.compile(r"VM_FAULT_[A-Z_]+(\|VM_FAULT_[A-Z_]+)*")
ORDERS = (0, 9, 18)                    # PTE, PMD, PUD on 4 KiB pages
LEVELS = ("pud", "pmd", "pte")
# A signal's si_code names, when it has them.  SIGKILL never carries code or addr; neither does
# a plain force_sig(SIGBUS) (si_code SI_KERNEL: a consumption memory_failure() did not recover).
SIGNAL_CODES = {"SIGBUS": ("BUS_ADRERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO"),
                "SIGSEGV": ("SEGV_MAPERR", "SEGV_ACCERR"),
                "SIGKILL": ()}
SUMMARY_COUNTS = ("pud", "pmd", "pte", "faults")
MAX_TRACE_BYTES = 512 << 20            # a larger file is refused, not read into memory


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and HEX.fullmatch(value) is not None


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.kinds = _known_step_kinds()

    def bad(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def listed(self, where: str, obj: dict, key: str) -> list:
        """obj[key] when it is a list; else the problem is noted and there is nothing to walk."""
        value = obj.get(key)
        if isinstance(value, list):
            return value
        self.bad(where, f"{key}: expected a list, got {value!r}")
        return []

    def hex_field(self, where: str, obj: dict, key: str) -> None:
        if not _is_hex(obj.get(key)):
            self.bad(where, f"{key}: expected a lowercase hex string such as 0x1f000, got {obj.get(key)!r}")

    # -- the whole trace ---------------------------------------------------------------------------
    def trace(self, data: Any) -> None:
        if not isinstance(data, dict):
            self.bad("trace", f"expected a JSON object, got {type(data).__name__}")
            return
        if data.get("hugepfn_trace") != 1 or not _is_int(data.get("hugepfn_trace")):
            self.bad("trace", f"hugepfn_trace: expected 1, got {data.get('hugepfn_trace')!r}")
        for key in ("kernel", "arch", "policy", "thp"):
            if not isinstance(data.get(key), str):
                self.bad("trace", f"{key}: expected a string, got {data.get(key)!r}")
        if "description" in data and not isinstance(data["description"], str):
            self.bad("trace", f"description: expected a string, got {data['description']!r}")
        steps = data.get("steps")
        if not isinstance(steps, list):
            self.bad("trace", f"steps: expected a list, got {steps!r}")
            steps = []
        for position, step in enumerate(steps):
            self.step(position, step)
        self.summary(data.get("summary"))

    def summary(self, summary: Any) -> None:
        if not isinstance(summary, dict):
            self.bad("summary", f"expected an object keyed by pid, got {summary!r}")
            return
        for pid, counts in summary.items():
            where = f"summary[{pid}]"
            if not pid.isdigit():
                self.bad(where, "the key must be a pid (decimal digits)")
            if not isinstance(counts, dict):
                self.bad(where, f"expected an object, got {counts!r}")
                continue
            for key in SUMMARY_COUNTS:
                if not _is_int(counts.get(key)) or counts[key] < 0:
                    self.bad(where, f"{key}: expected a count >= 0, got {counts.get(key)!r}")

    # -- one step ------------------------------------------------------------------------------------
    def step(self, position: int, step: Any) -> None:
        where = f"steps[{position}]"
        if not isinstance(step, dict):
            self.bad(where, f"expected an object, got {step!r}")
            return
        do = step.get("do")
        if not isinstance(do, str):
            self.bad(where, f"do: expected a step kind name, got {do!r}")
            do = None
        else:
            where = f"{where} ({do})"
        if step.get("index") != position + 1 or not _is_int(step.get("index")):
            self.bad(where, f"index: expected {position + 1} (steps are numbered from 1), got {step.get('index')!r}")
        if step.get("ret") == "Oops":
            self.crash(where, step)
        elif do == "access":
            self.access(where, step)
        elif "ret" not in step or not (step["ret"] == 0 and _is_int(step["ret"])
                                       or isinstance(step["ret"], str) and ERRNO.fullmatch(step["ret"])):
            self.bad(where, f"ret: expected 0 or a negative errno name such as \"-EINVAL\", got {step.get('ret')!r}")
        for j, signal in enumerate(self.listed(where, step, "signals")):
            self.signal(f"{where}.signals[{j}]", signal)
        log = step.get("log")
        if not isinstance(log, list) or not all(isinstance(line, str) for line in log):
            self.bad(where, "log: expected a list of strings")
        if "zapped" in step:
            self.zapped(where, self.listed(where, step, "zapped"))
        if "events" in step:
            self.events(where, self.listed(where, step, "events"))
        if "note" in step and not isinstance(step["note"], str):
            self.bad(where, f"note: expected a string, got {step['note']!r}")
        if do in self.kinds:
            self.kind_fields(where, step, self.kinds[do])

    def crash(self, where: str, step: dict) -> None:
        """A step at which the kernel oopses: ret "Oops" and what the kernel prints (the last step)."""
        crash = step.get("crash")
        if not isinstance(crash, dict) or not isinstance(crash.get("first_line"), str) \
                or not isinstance(crash.get("call_trace"), list) \
                or not all(isinstance(f, str) for f in crash["call_trace"]):
            self.bad(where, f"crash: expected {{first_line, call_trace: [function, ...]}} with ret \"Oops\", "
                            f"got {crash!r}")

    def access(self, where: str, step: dict) -> None:
        ret = step.get("ret")
        if not (ret == "0" or isinstance(ret, str) and VM_FAULT.fullmatch(ret)):
            self.bad(where, f"ret: expected \"0\" or VM_FAULT_* names joined by '|', got {ret!r}")
        for j, call in enumerate(self.listed(where, step, "calls")):
            if not isinstance(call, dict) or call.get("order") not in ORDERS or not _is_int(call.get("order")) \
                    or not (isinstance(call.get("ret"), str) and VM_FAULT.fullmatch(call["ret"])):
                self.bad(f"{where}.calls[{j}]", f"expected {{order: 0|9|18, ret: VM_FAULT_*}}, got {call!r}")
        if "mapped" not in step:
            self.bad(where, "mapped: missing (null when nothing maps the address)")
        mapped = step.get("mapped")
        if mapped is not None:
            if not isinstance(mapped, dict):
                self.bad(where, f"mapped: expected an object or null, got {mapped!r}")
                return
            if mapped.get("level") not in LEVELS:
                self.bad(f"{where}.mapped", f"level: expected pud, pmd or pte, got {mapped.get('level')!r}")
            self.hex_field(f"{where}.mapped", mapped, "va")
            self.hex_field(f"{where}.mapped", mapped, "pfn")

    def signal(self, where: str, signal: Any) -> None:
        if not isinstance(signal, dict):
            self.bad(where, f"expected an object, got {signal!r}")
            return
        if not _is_int(signal.get("tid")):
            self.bad(where, f"tid: expected an integer, got {signal.get('tid')!r}")
        signo = signal.get("signo")
        if signo not in SIGNAL_CODES:
            self.bad(where, f"signo: expected one of {', '.join(SIGNAL_CODES)}, got {signo!r}")
        elif not SIGNAL_CODES[signo] or "code" not in signal:
            if "code" in signal or "addr" in signal:
                self.bad(where, f"{'a SIGKILL' if signo == 'SIGKILL' else 'without a code, a ' + signo} "
                                "carries no code or addr")
        else:
            if signal["code"] not in SIGNAL_CODES[signo]:
                self.bad(where, f"code: a {signo} has one of {', '.join(SIGNAL_CODES[signo])}, "
                                f"got {signal['code']!r}")
            self.hex_field(where, signal, "addr")
        if "addr_lsb" in signal and not _is_int(signal["addr_lsb"]):
            self.bad(where, f"addr_lsb: expected an integer, got {signal['addr_lsb']!r}")
        if not isinstance(signal.get("delivered"), bool):
            self.bad(where, f"delivered: expected true or false, got {signal.get('delivered')!r}")

    def zapped(self, where: str, zapped: list) -> None:
        for j, zap in enumerate(zapped):
            here = f"{where}.zapped[{j}]"
            if not isinstance(zap, dict):
                self.bad(here, f"expected an object, got {zap!r}")
                continue
            if not _is_int(zap.get("pid")):
                self.bad(here, f"pid: expected an integer, got {zap.get('pid')!r}")
            self.hex_field(here, zap, "va")
            self.hex_field(here, zap, "length")
            if zap.get("level") not in LEVELS:
                self.bad(here, f"level: expected pud, pmd or pte, got {zap.get('level')!r}")

    def events(self, where: str, events: list) -> None:
        for j, event in enumerate(events):
            here = f"{where}.events[{j}]"
            if not isinstance(event, dict):
                self.bad(here, f"expected an object, got {event!r}")
                continue
            for key in ("pfn", "bar_offset", "granularity"):
                self.hex_field(here, event, key)
            for key in ("device", "policy", "action", "result"):
                if not isinstance(event.get(key), str):
                    self.bad(here, f"{key}: expected a string, got {event.get(key)!r}")
            for key in ("bar", "signals_sent", "consumption_count"):
                if not _is_int(event.get(key)):
                    self.bad(here, f"{key}: expected an integer, got {event.get(key)!r}")

    def kind_fields(self, where: str, step: dict, fields) -> None:
        """The kind's own fields, spelled as Field.to_trace spells them."""
        for f in fields:
            if f.name not in step:
                self.bad(where, f"{f.name}: missing (a field of {step['do']!r})")
                continue
            value = step[f.name]
            if value is None and not f.required and f.default is None:
                continue
            if f.shows_hex:
                ok, want = _is_hex(value), "a lowercase hex string"
            elif f.kind == "int":
                ok, want = _is_int(value), "an integer"
            elif f.kind == "bool":
                ok, want = isinstance(value, bool), "true or false"
            elif f.kind == "str":
                ok, want = isinstance(value, str), "a string"
            elif f.kind == "strlist":
                ok, want = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
            else:
                continue
            if not ok:
                self.bad(where, f"{f.name}: expected {want}, got {value!r}")


def _known_step_kinds() -> dict:
    """The step kinds of this installation, with their field schemas (optional models included)."""
    from .scenario.runner import load_extensions
    from .scenario.steps import STEP_KINDS

    load_extensions()
    return {name: kind.fields for name, kind in STEP_KINDS.items()}


def check_trace(data: Any) -> list[str]:
    """Every problem with the form of a decoded trace, one line each ([] when it is fine)."""
    checker = _Checker()
    checker.trace(data)
    return checker.problems


def load_trace(path: str) -> Any:
    """The decoded JSON of ``path`` ("-": stdin); ValueError (one line) when it cannot be."""
    if path == "-":
        raw = sys.stdin.buffer.read(MAX_TRACE_BYTES + 1)
    else:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TRACE_BYTES + 1)
    if len(raw) > MAX_TRACE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TRACE_BYTES >> 20} MiB; not read as a trace")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path}: not JSON: nested too deeply") from None
    except ValueError as exc:          # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not JSON: {exc}") from None


def check_files(paths: list[str], out=sys.stdout) -> int:
    """Print ``FILE: trace ok`` or ``FILE: <problem>`` lines; 0 when every file is fine, else 1.
    A file that cannot be read or decoded raises OSError / ValueError (the CLI's one-line error)."""
    status = 0
    for path in paths:
        problems = check_trace(load_trace(path))
        for problem in problems:
            print(f"{path}: {problem}", file=out)
        print(f"{path}: trace ok" if not problems else f"{path}: {len(problems)} problem(s)", file=out)
        status |= bool(problems)
    return status


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hugepfn.host.trace_check",
                                     description="Check that traces have the form docs/scenarios.md specifies.")
    parser.add_argument("files", nargs="+", metavar="TRACE.json", help="trace files (- for stdin)")
    args = parser.parse_args(argv)
    try:
        return check_files(args.files)
    except ValueError as exc:               # not JSON, too large: as `hugepfn check-trace` says it
        print(f"check-trace: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"check-trace: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
