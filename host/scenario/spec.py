"""Parsing a scenario file: the machine section (kernel, arch, devices, processes) and the steps.

parse_scenario(data) -> Scenario, with every value converted and cross-checked (a step's
pid, tid and device must exist).  Errors are one-line ScenarioErrors naming the place.

What a file may say comes from two registries: the scenario registry (step kinds, extra device
fields; hugepfn.host.scenario.wiring) and the driver registry (driver names and the fields each
driver declares; hugepfn.host.drivers.registry).  ``plugins = ["module", ...]`` adds the
drivers of those modules for this scenario only.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hugepfn.device.input_limits import InputError, load_toml

from .. import kernel as kernel_mod
from ..driver_error import DriverError
from ..drivers.registry import DriverRegistry, default_registry as default_drivers
from .errors import ScenarioError
from .expect import parse_expect
from .fields import Field, convert_fields
from .registry import ScenarioRegistry
from .steps import SYSCTLS

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
    Field("plugins", "strlist", required=False, default=[]),
    Field("device", "any", required=False, default=[]),
    Field("process", "any", required=False, default=[]),
    Field("step", "any", required=False, default=[]),
)
BAR_FIELDS = (Field("index", "int", check=lambda v: None if 0 <= v <= 5 else f"must be 0..5, got {v}"),
              Field("phys"), Field("size"), Field("io", "bool", required=False, default=False))
PROCESS_FIELDS = (Field("comm", "str"), Field("pid", "int", check=lambda v: None if v > 0 else "must be positive"),
                  Field("threads", "any", required=False, default=None))
# The [[device]] fields every driver has; the registry adds the models' (``serve``), the driver its own.
DEVICE_FIELDS = (
    Field("name", "str"),
    Field("driver", "str", required=False, default="vfio-pci"),
    Field("bdf", "str", required=False, default=None,
          check=lambda v: None if _BDF.match(v) else f"expected a PCI address like 0000:01:00.0, got {v!r}"),
    Field("bars", "any", required=False, default=[]),
    Field("virtfn", "bool", required=False, default=False),
    Field("reset_works", "bool", required=False, default=True),
    Field("ready_after_ms", "int", required=False, default=0),
)


@dataclass
class DeviceSpec:
    name: str
    driver: str
    bdf: str
    bars: list[dict]
    virtfn: bool
    reset_works: bool
    ready_after_ms: int
    extra: dict = field(default_factory=dict)            # the registry's device fields (serve)
    driver_args: dict = field(default_factory=dict)      # the driver's own fields, for its constructor


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
    plugins: list[str] = field(default_factory=list)
    # what it was parsed with (and will run with)
    registry: ScenarioRegistry | None = field(default=None, repr=False, compare=False)
    drivers: DriverRegistry | None = field(default=None, repr=False, compare=False)

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


def _scenario_drivers(plugins: list[str], drivers: DriverRegistry | None) -> DriverRegistry:
    base = drivers if drivers is not None else default_drivers()
    if not plugins:
        return base
    own = base.child()
    try:
        own.load_modules(plugins, "plugins")
    except DriverError as exc:
        raise ScenarioError(f"scenario: {exc}") from None
    return own


def _device(raw: dict, where: str, registry: ScenarioRegistry, drivers: DriverRegistry) -> tuple[dict, dict, dict]:
    """The [[device]] table as (generic fields, registry fields, driver fields), each converted."""
    driver = raw.get("driver", "vfio-pci")
    if not isinstance(driver, str):
        raise ScenarioError(f"{where}: driver: expected a string, got {driver!r}")
    try:
        cls = drivers.get(driver)
    except DriverError as exc:
        raise ScenarioError(f"{where}: driver: {exc}") from None
    own = tuple(cls.fields)
    shared = DEVICE_FIELDS + tuple(registry.device_fields)
    known = {f.name for f in shared + own}
    for key in raw:
        if key not in known:
            others = [name for name in drivers.declaring(key) if name != driver]
            if others:
                raise ScenarioError(f"{where}: {key}: only {', '.join(others)} devices have {key}")
            raise ScenarioError(f"{where}: unknown field {key!r} (expected {', '.join(sorted(known))})")
    values = convert_fields(shared + own, raw, where)
    generic = {f.name: values[f.name] for f in DEVICE_FIELDS}
    return (generic, {f.name: values[f.name] for f in registry.device_fields},
            {f.name: values[f.name] for f in own})


def parse_scenario(data: dict, source: str = "", registry: ScenarioRegistry | None = None,
                   drivers: DriverRegistry | None = None) -> Scenario:
    """``registry``: the step kinds and device fields (default: hugepfn's own, wiring.py);
    ``drivers``: the drivers devices may name (default: the process-wide registry), plus the
    file's own ``plugins``."""
    if registry is None:
        from .wiring import default_registry
        registry = default_registry()
    top = convert_fields(MACHINE_FIELDS, data, "scenario")
    drivers = _scenario_drivers(top["plugins"], drivers)
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
        d, extra, driver_args = _device(raw, where, registry, drivers)
        if any(x.name == d["name"] for x in devices):
            raise ScenarioError(f"{where}: name: duplicate device name {d['name']!r}")
        bars = [convert_fields(BAR_FIELDS, b, f"{where}.bars[{j}]")
                for j, b in enumerate(_list_of_tables(d["bars"], f"{where}.bars"))]
        if len({b["index"] for b in bars}) != len(bars):
            raise ScenarioError(f"{where}: bars: duplicate BAR index")
        bdf = d["bdf"] or f"0000:{i + 1:02x}:00.0"
        if any(x.bdf == bdf for x in devices):
            raise ScenarioError(f"{where}: bdf: duplicate PCI address {bdf}")
        devices.append(DeviceSpec(d["name"], d["driver"], bdf, bars, d["virtfn"], d["reset_works"],
                                  d["ready_after_ms"], extra, driver_args))

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
        kinds = registry.step_kinds
        if not isinstance(do, str) or do not in kinds:
            raise ScenarioError(f"step {i}: do: unknown step kind {do!r} (known: {', '.join(kinds)})")
        kind = kinds[do]
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
                    top["thp_sysfs_gates_pfnmap"], top["dyndbg"], top["description"], source,
                    plugins=list(top["plugins"]), registry=registry, drivers=drivers)


def load_scenario(path: str | Path, registry: ScenarioRegistry | None = None,
                  drivers: DriverRegistry | None = None) -> Scenario:
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
    return parse_scenario(data, str(path), registry, drivers)
