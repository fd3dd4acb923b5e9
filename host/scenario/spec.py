"""Parsing a scenario file: the machine section (kernel, arch, devices, processes) and the steps.

parse_scenario(data) -> Scenario, with every value converted and cross-checked (a step's
pid, tid and device must exist).  Errors are one-line ScenarioErrors naming the place.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hugepfn.device.input_limits import InputError, load_toml

from .. import kernel as kernel_mod
from ..drivers import DRIVERS
from .errors import ScenarioError
from .expect import parse_expect
from .fields import Field, convert_fields
from .steps import STEP_KINDS, SYSCTLS

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")

MACHINE_FIELDS = (
    Field("kernel", "str", required=False, default="7.3", choices=tuple(kernel_mod.PROFILES)),
    Field("arch", "str", required=False, default="x86_64", choices=tuple(kernel_mod.ARCHES)),
    Field("thp", "str", required=False, default="always", choices=kernel_mod.THP_MODES),
    Field("policy", "str", required=False, default="upstream", choices=kernel_mod.POLICIES),
    # extensions
    Field("thp_sysfs_gates_pfnmap", "bool", required=False, default=None),
    Field("dyndbg", "bool", required=False, default=True),
    Field("description", "str", required=False, default=""),
    Field("sysctl", "any", required=False, default={}),
    Field("device", "any", required=False, default=[]),
    Field("process", "any", required=False, default=[]),
    Field("step", "any", required=False, default=[]),
)
BAR_FIELDS = (Field("index", "int", check=lambda v: None if 0 <= v <= 5 else f"must be 0..5, got {v}"),
              Field("phys"), Field("size"), Field("io", "bool", required=False, default=False))
MEM_FIELDS = (Field("memphys"), Field("memlength"))
PROCESS_FIELDS = (Field("comm", "str"), Field("pid", "int", check=lambda v: None if v > 0 else "must be positive"),
                  Field("threads", "any", required=False, default=None))


# Extra [[device]] fields declared by optional models (e.g. `serve`, hugepfn.host.scenario.served);
# their converted values land in DeviceSpec.extra.
DEVICE_EXTENSION_FIELDS: list[Field] = []


def _device_fields() -> tuple[Field, ...]:
    return (Field("name", "str"), Field("driver", "str", required=False, default="vfio-pci", choices=tuple(DRIVERS)),
            Field("bdf", "str", required=False, default=None,
                  check=lambda v: None if _BDF.match(v) else f"expected a PCI address like 0000:01:00.0, got {v!r}"),
            Field("bars", "any", required=False, default=[]),
            Field("usemem", "any", required=False, default=None),
            Field("resmem", "any", required=False, default=None),
            Field("virtfn", "bool", required=False, default=False),
            Field("reset_works", "bool", required=False, default=True),
            Field("ready_after_ms", "int", required=False, default=0)) + tuple(DEVICE_EXTENSION_FIELDS)


@dataclass
class DeviceSpec:
    name: str
    driver: str
    bdf: str
    bars: list[dict]
    usemem: dict | None
    resmem: dict | None
    virtfn: bool
    reset_works: bool
    ready_after_ms: int
    extra: dict = field(default_factory=dict)


@dataclass
class ProcessSpec:
    comm: str
    pid: int
    threads: list[int]


@dataclass
class Step:
    index: int                  # 1-based, as in the trace
    kind: str
    fields: dict[str, Any]
    note: str | None = None
    expect: dict[str, Any] | None = None     # the [step.expect] table, checked (hugepfn.host.scenario.expect)

    @property
    def where(self) -> str:
        return f"step {self.index} ({self.kind})"


@dataclass
class Scenario:
    kernel: str
    arch: str
    thp: str
    policy: str
    sysctl: dict[str, int]
    devices: list[DeviceSpec]
    processes: list[ProcessSpec]
    steps: list[Step]
    thp_sysfs_gates_pfnmap: bool | None = None
    dyndbg: bool = True
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def expectations(self) -> int:
        """How many checks the steps' [step.expect] tables make."""
        return sum(len(s.expect) for s in self.steps if s.expect)


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a table, got {value!r}")
    return value


def _list_of_tables(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: expected an array of tables, got {value!r}")
    return [_table(v, f"{where}[{i}]") for i, v in enumerate(value)]


def parse_scenario(data: dict, source: str = "") -> Scenario:
    from .runner import load_extensions
    load_extensions()           # optional models may add step kinds or fields: load them before checking
    top = convert_fields(MACHINE_FIELDS, data, "scenario")
    sysctl = {}
    for name, value in _table(top["sysctl"], "sysctl").items():
        if name not in SYSCTLS:
            raise ScenarioError(f"sysctl: unknown sysctl {name!r} (known: {', '.join(SYSCTLS)})")
        lo, hi = SYSCTLS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ScenarioError(f"sysctl: {name}: must be an integer {lo}..{hi}, got {value!r}")
        sysctl[name] = value

    devices: list[DeviceSpec] = []
    for i, raw in enumerate(_list_of_tables(top["device"], "device")):
        where = f"device[{i}]"
        d = convert_fields(_device_fields(), raw, where)
        if any(x.name == d["name"] for x in devices):
            raise ScenarioError(f"{where}: name: duplicate device name {d['name']!r}")
        bars = [convert_fields(BAR_FIELDS, b, f"{where}.bars[{j}]")
                for j, b in enumerate(_list_of_tables(d["bars"], f"{where}.bars"))]
        if len({b["index"] for b in bars}) != len(bars):
            raise ScenarioError(f"{where}: bars: duplicate BAR index")
        mems = {}
        for key in ("usemem", "resmem"):
            if d[key] is not None:
                if d["driver"] != "nvgrace-gpu":
                    raise ScenarioError(f"{where}: {key}: only nvgrace-gpu devices have {key}")
                mems[key] = convert_fields(MEM_FIELDS, _table(d[key], f"{where}.{key}"), f"{where}.{key}")
        bdf = d["bdf"] or f"0000:{i + 1:02x}:00.0"
        if any(x.bdf == bdf for x in devices):
            raise ScenarioError(f"{where}: bdf: duplicate PCI address {bdf}")
        devices.append(DeviceSpec(d["name"], d["driver"], bdf, bars, mems.get("usemem"), mems.get("resmem"),
                                  d["virtfn"], d["reset_works"], d["ready_after_ms"],
                                  {f.name: d[f.name] for f in DEVICE_EXTENSION_FIELDS}))

    processes: list[ProcessSpec] = []
    tids: set[int] = set()
    for i, raw in enumerate(_list_of_tables(top["process"], "process")):
        where = f"process[{i}]"
        p = convert_fields(PROCESS_FIELDS, raw, where)
        threads = p["threads"] if p["threads"] is not None else [p["pid"]]
        if (not isinstance(threads, list) or not threads
                or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in threads)):
            raise ScenarioError(f"{where}: threads: expected a non-empty list of positive tids, got {threads!r}")
        if threads[0] != p["pid"]:
            raise ScenarioError(f"{where}: threads: the first thread must be the pid {p['pid']}, got {threads[0]}")
        if any(x.pid == p["pid"] for x in processes):
            raise ScenarioError(f"{where}: pid: duplicate pid {p['pid']}")
        for t in threads:
            if t in tids:
                raise ScenarioError(f"{where}: threads: duplicate tid {t}")
            tids.add(t)
        processes.append(ProcessSpec(p["comm"], p["pid"], list(threads)))

    pids = {p.pid for p in processes}
    names = {d.name for d in devices}
    steps: list[Step] = []
    for i, raw in enumerate(_list_of_tables(top["step"], "step"), start=1):
        do = raw.get("do")
        if do is None:
            raise ScenarioError(f"step {i}: do: missing")
        if not isinstance(do, str) or do not in STEP_KINDS:
            raise ScenarioError(f"step {i}: do: unknown step kind {do!r} (known: {', '.join(STEP_KINDS)})")
        kind = STEP_KINDS[do]
        where = f"step {i} ({do})"
        body = {k: v for k, v in raw.items() if k != "do"}
        note = body.pop("note", None)
        if note is not None and not isinstance(note, str):
            raise ScenarioError(f"{where}: note: expected a string, got {note!r}")
        expect = body.pop("expect", None)
        if expect is not None:
            expect = parse_expect(expect, do, where)
        fields = convert_fields(kind.fields, body, where)
        for key, value in fields.items():
            if key == "pid" and value not in pids:
                raise ScenarioError(f"{where}: pid: no process with pid {value}")
            if key in ("tid", "current") and isinstance(value, int) and value not in tids:
                raise ScenarioError(f"{where}: {key}: no thread with tid {value}")
            if key == "device" and value is not None and value not in names:
                raise ScenarioError(f"{where}: device: no device named {value!r}")
        if do == "fork":
            child = fields["child"]
            if child in pids or child in tids:
                raise ScenarioError(f"{where}: child: pid {child} is already taken")
            pids.add(child)         # the child (its one thread is tid = pid) exists from here on
            tids.add(child)
        steps.append(Step(i, do, fields, note, expect))

    return Scenario(top["kernel"], top["arch"], top["thp"], top["policy"], sysctl, devices, processes, steps,
                    top["thp_sysfs_gates_pfnmap"], top["dyndbg"], top["description"], source)


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file (OSError if it cannot be read).

    Only a regular file of at most 1 MiB, nested at most 32 levels, is read
    (hugepfn.device.input_limits): /dev/zero, a FIFO or a hostile document is a
    one-line ScenarioError, never an endless read or a RecursionError."""
    path = Path(path)
    try:
        data = load_toml(path, str(path))
    except InputError as exc:
        raise ScenarioError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    return parse_scenario(data, str(path))
