"""`hugepfn crosscheck`: replay scenarios on a real kernel and diff them with the model.

``crosscheck(paths, series, ...)`` plans every scenario (those that cannot be replayed are
reported with the reason), fetches the kernel, boots one guest for all of them (a kernel
crash ends a boot: the crash is reported for the scenario that was running and the rest
run in a new boot), then for each scenario runs the model on the scenario as the guest saw
it (its BARs where the guest's firmware placed them) and compares the two traces.
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from hugepfn.host.scenario.errors import ScenarioError
from hugepfn.host.scenario.runner import ScenarioRun, build_machine, run_scenario
from hugepfn.host.scenario.spec import load_scenario

from . import kernels as kernels_mod
from .boot import BootResult, Crash, boot
from .compare import Verdict, compare
from .kprobes import DYNDBG_FUNCS, KPROBES
from .observe import kernel_trace
from .plan import (FIRST_SLOT, GuestBar, NotCrosscheckable, Plan, device_key, guest_scenario, nvgrace_memory, plan,
                   reslot)


@dataclass
class ScenarioResult:
    name: str
    path: str
    skipped: str | None = None              # why it was not crosschecked
    verdicts: list[Verdict] = field(default_factory=list)
    crash: Crash | None = None
    model: dict | None = None
    kernel: dict | None = None
    error: str | None = None
    raw: dict | None = None                 # what the guest printed (hugepfn.crosscheck.matrix --record)

    @property
    def agrees(self) -> bool:
        """Every step agrees; a kernel crash agrees when the model predicted it (its step's
        verdict compares the crash)."""
        return (self.skipped is None and self.error is None and bool(self.verdicts)
                and all(v.agrees for v in self.verdicts))


@dataclass
class Report:
    series: str
    arch: str
    release: str = ""
    results: list[ScenarioResult] = field(default_factory=list)
    boots: int = 0
    seconds: float = 0.0


def scenario_name(path: Path) -> str:
    return path.stem.replace(" ", "_")


def assign_slots(plans: list[Plan]) -> list:
    """One served device per distinct device shape and occurrence; every plan's devices are
    put on those slots.  Returns the boot's devices."""
    slots: dict[tuple[str, int], int] = {}
    boot_devices = []
    for p in plans:
        seen: dict[str, int] = {}
        chosen = []
        for dev in p.devices:
            key = device_key(dev)
            k = seen.get(key, 0)
            seen[key] = k + 1
            if (key, k) not in slots:
                slots[(key, k)] = FIRST_SLOT + len(slots)
                boot_devices.append(dev)
            chosen.append(slots[(key, k)])
        reslot(p, chosen)
    for dev, slot in zip(boot_devices, sorted(slots.values())):
        dev.slot = slot
    return boot_devices


def _guest_bars(lines: list[str]) -> list[GuestBar]:
    out = []
    for line in lines:
        words = line.split()
        if words[1] == "bar":
            slot, index, start, end = int(words[2]), int(words[3]), int(words[4], 16), int(words[5], 16)
            out.append(GuestBar(slot, index, start, end - start + 1 if end else 0))
    return out


def _model_trace(p: Plan, bars: list[GuestBar], series: str, boot: dict | None = None) -> dict:
    """The model's trace of the scenario as the guest saw it.  ``boot`` is the kernel-global
    state left by the scenarios that ran before it in the same guest (the probe's processes
    exit at the end of each scenario, so the model's do too)."""
    scenario = guest_scenario(p, bars)
    scenario.kernel = series
    scenario.dyndbg = True
    run = ScenarioRun(scenario, build_machine(scenario, {} if boot is None else boot))
    trace = run.run().to_json()
    if run.crash is None:
        for pid in list(run.machine.tasks.processes):
            run.machine.exit(pid)
    return trace


def crosscheck(paths: list[Path], series: str, arch: str, cache: Path, mirror: str, logs: Path,
               timeout: float = 1500.0, progress=print) -> Report:
    started = time.monotonic()
    report = Report(series, arch)
    kernel = kernels_mod.fetch(series, arch, cache, mirror)
    report.release = kernel.release
    plans: list[Plan] = []
    results: dict[str, ScenarioResult] = {}
    for path in paths:
        name = scenario_name(path)
        result = results[name] = ScenarioResult(name, str(path))
        try:
            scenario = load_scenario(path)
            if scenario.arch != arch:
                raise NotCrosscheckable(f"arch {scenario.arch} (this run is {arch})")
            plans.append(plan(scenario, name, vfio=kernel.has_vfio))
        except NotCrosscheckable as exc:
            result.skipped = str(exc)
        except (ScenarioError, OSError, ValueError) as exc:
            result.error = str(exc)
    root = cache / "trixie-root"
    busybox = root / "usr" / "bin" / "busybox"
    extra_modules: list[Path] = []
    if arch == "arm64" and plans:
        from . import arm64
        logs.mkdir(parents=True, exist_ok=True)
        arm64.ensure_qemu_arm(root, logs / "arm64-setup.log")
        busybox = arm64.ensure_busybox(cache, mirror)
        if any(d.driver != "vfio-pci" for p in plans for d in p.devices):
            progress("crosscheck: building nvgrace-gpu from Debian's source (cached after the first time)")
            extra_modules.append(arm64.ensure_nvgrace_module(kernel, cache, mirror, logs / "nvgrace-build.log"))
    remaining = sorted(plans, key=lambda p: predicts_crash(p, series))     # stable: crashes last
    while remaining:
        devices = assign_slots(remaining)
        gpus = None
        if any(d.driver != "vfio-pci" for d in devices):
            gpus = _gpu_properties(kernel, root, busybox, devices, cache, logs, extra_modules, report, progress)
        progress(f"crosscheck: booting {kernel.release} for {len(remaining)} scenario(s)")
        res: BootResult = boot(kernel, root, busybox, remaining, devices, list(KPROBES), list(DYNDBG_FUNCS),
                               cache, logs, timeout, boot_number=report.boots + 1, extra_modules=extra_modules,
                               dtb_gpus=gpus, memory_mb=1024 if arch == "arm64" else 512)
        report.boots += 1
        ran = [p for p in remaining if p.name in res.finished]
        crashed = res.crash.scenario if res.crash else None
        boot_state: dict = {}               # the guest's kernel-global state, scenario after scenario
        before: list[dict] = []
        for p in ran + [x for x in remaining if x.name == crashed]:
            raw = {"series": series, "arch": arch, "release": res.release, "scenario": p.name,
                   "lines": res.scenarios.get(p.name, []), "devices": res.devices.get(p.name, []),
                   "slots": [d.slot for d in p.devices], "crash": None, "before": list(before),
                   "vfio": kernel.has_vfio}
            if p.name == crashed:
                results[crashed].crash = res.crash
                raw["crash"] = {"first_line": res.crash.first_line, "trace": res.crash.trace}
            judge(results[p.name], p, raw, boot_state)
            before.append({"scenario": p.name, "slots": raw["slots"]})
        done = {p.name for p in ran} | ({crashed} if crashed else set())
        if not done:
            for p in remaining:
                results[p.name].error = (f"the guest ran no scenario (console: {res.console})"
                                         if not res.release else "the guest stopped before this scenario")
            break
        remaining = [p for p in remaining if p.name not in done]
    report.results = [results[scenario_name(p)] for p in paths]
    report.seconds = time.monotonic() - started
    return report


def _gpu_properties(kernel, root: Path, busybox: Path, devices: list, cache: Path, logs: Path,
                    extra_modules: list[Path], report: Report, progress) -> dict[int, tuple[int, int]]:
    """nvgrace-gpu's firmware properties per slot: where the guest kernel places the memory BAR
    (deterministic for one set of devices: learnt from one boot without scenarios, cached)."""
    import hashlib
    import json as json_mod

    key = hashlib.sha256(json_mod.dumps([kernel.release, [(d.slot, device_key(d)) for d in devices]],
                                        sort_keys=True).encode()).hexdigest()[:16]
    cached = cache / "arm64" / f"placement-{key}.json"
    if cached.exists():
        lines = json_mod.loads(cached.read_text())
    else:
        progress(f"crosscheck: booting {kernel.release} once to learn where the GPU memory BAR goes")
        res = boot(kernel, root, busybox, [], devices, [], [], cache, logs, 300, boot_number=0,
                   extra_modules=extra_modules, memory_mb=1024)
        report.boots += 1
        lines = res.placement
        if not lines:
            raise RuntimeError(f"the placement boot printed no BARs (console: {res.console})")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json_mod.dumps(lines))
    bars = _guest_bars(lines)
    by_slot: dict[int, dict[int, GuestBar]] = {}
    for bar in bars:
        by_slot.setdefault(bar.slot, {})[bar.index] = bar
    out = {}
    for dev in devices:
        if dev.driver != "vfio-pci":
            memory = nvgrace_memory(dev, by_slot.get(dev.slot, {}))
            if memory is not None:
                out[dev.slot] = memory
    return out


def call_trace_functions(crash: Crash) -> list[str]:
    """The functions of an Oops, innermost first: the RIP's, then the reliable call-trace
    entries ("? " entries are the unwinder's guesses)."""
    out = []
    in_trace = False
    for line in crash.trace:
        text = line.strip()
        if text.startswith("RIP:"):
            name = text.split(":", 2)[-1].split("+", 1)[0].strip()
            if name:
                out.append(name)
        elif text.startswith("Call Trace:"):
            in_trace = True
        elif in_trace:
            if text.startswith("<") or text.startswith("? "):
                continue
            name = text.split("+", 1)[0].strip()
            if re.fullmatch(r"[A-Za-z_][\w.]*", name):
                out.append(name)
    return out


def predicts_crash(p: Plan, series: str) -> bool:
    """Whether the model says the kernel crashes in this scenario (such scenarios end a boot,
    so they run last)."""
    scenario = copy.deepcopy(p.scenario)
    scenario.kernel = series
    try:
        return "crashed_at" in run_scenario(scenario).to_json()
    except Exception:
        return False


def judge(result: ScenarioResult, p: Plan, raw: dict, boot: dict | None = None) -> None:
    """Compare what the guest printed for one scenario (``raw``) with the model's trace of
    the same scenario as the guest saw it (``boot``: see _model_trace)."""
    result.raw = raw
    series = raw["series"]
    bars = _guest_bars(raw["devices"])
    pid_of = {t: proc.pid for proc in p.scenario.processes for t in proc.threads}
    for step in p.scenario.steps:
        if step.kind == "fork":
            pid_of[step.fields["child"]] = step.fields["child"]
    result.kernel = kernel_trace(raw["lines"], guest_scenario(p, bars), pid_of)
    if raw.get("crash"):
        crash = Crash(p.name, raw["crash"]["first_line"], raw["crash"]["trace"])
        result.crash = crash
        for step in result.kernel["steps"]:
            if step.get("ret") == "unfinished":
                step["ret"] = "Oops"
                step["crash"] = {"first_line": crash.first_line, "call_trace": call_trace_functions(crash)}
                break
    try:
        result.model = _model_trace(p, bars, series, boot)
    except Exception as exc:    # the model itself failed: that is a finding, reported per scenario
        result.error = f"the model failed on the guest's scenario: {type(exc).__name__}: {exc}"
        return
    result.verdicts = compare(result.model, result.kernel, pid_of)


def replay(raw: dict, path: Path, memo: dict | None = None) -> ScenarioResult:
    """Judge recorded guest output again (no guest): the converter and the diff as on CI.
    The scenarios that ran before it in the same boot run first (their model only), for the
    kernel-global state they left.  ``memo`` (kept by the caller across calls) holds that state
    after each prefix of a boot already replayed, so replaying a boot's scenarios one by one
    runs each earlier scenario's model once, not once per later scenario."""
    memo = {} if memo is None else memo
    before = raw.get("before", [])
    keys = [(raw["release"], tuple(raw["devices"]), *(f"{e['scenario']}@{e['slots']}" for e in before[:n])) for n in range(len(before) + 1)]
    start = max(n for n in range(len(keys)) if n == 0 or keys[n] in memo)
    boot: dict = copy.deepcopy(memo.get(keys[start], {}))
    bars = _guest_bars(raw["devices"])
    for n in range(start, len(before)):
        earlier = before[n]
        q = plan(load_scenario(path.parent / f"{earlier['scenario']}.toml"), earlier["scenario"], vfio=raw.get("vfio", True))
        reslot(q, earlier["slots"])
        try:
            _model_trace(q, bars, raw["series"], boot)
        except Exception:           # its own replay reports it; here only its effects matter
            pass
        memo[keys[n + 1]] = copy.deepcopy(boot)
    result = ScenarioResult(raw["scenario"], str(path))
    p = plan(load_scenario(path), raw["scenario"], vfio=raw.get("vfio", True))
    reslot(p, raw["slots"])
    judge(result, p, raw, boot)
    return result
