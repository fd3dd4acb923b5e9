"""Running a parsed scenario: build the Machine, open devices, run each step through its
handler and record what it did into the Trace."""
from __future__ import annotations

import errno
import importlib
from pathlib import Path
from typing import Callable

from ..drivers.pci import PciBar, PciDevice
from ..machine import Machine
from ..oops import KernelOops
from ..trace import StepRecord, Trace, errno_name
from .errors import ScenarioError
from .spec import Scenario, Step, load_scenario
from .steps import STEP_KINDS

# Called with the ScenarioRun after its last step (optional models add trace facts here).
RUN_FINISHERS: list = []

# Optional packages that add step handlers / machine extensions when imported.
OPTIONAL_EXTENSIONS = ("hugepfn.host.memory_failure", "hugepfn.host.scenario.served")

# prepare(machine, device_spec) -> PciDevice | None, asked before a device is bound: an optional
# model may supply the PCI device itself (a served device, its BARs placed as firmware does).
DEVICE_PREPARERS: list = []


def load_extensions() -> None:
    for name in OPTIONAL_EXTENSIONS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def build_machine(scenario: Scenario) -> Machine:
    machine = Machine(scenario.kernel, scenario.arch, scenario.thp, scenario.policy, scenario.sysctl,
                      scenario.thp_sysfs_gates_pfnmap, scenario.dyndbg)
    for p in scenario.processes:
        machine.create_process(p.pid, p.comm, p.threads)
    for d in scenario.devices:
        pdev = next((p for p in (prepare(machine, d) for prepare in DEVICE_PREPARERS) if p is not None), None) \
            or PciDevice(bdf=d.bdf, bars={b["index"]: PciBar(b["index"], b["phys"], b["size"], b["io"])
                                          for b in d.bars},
                         is_virtfn=d.virtfn, reset_works=d.reset_works, ready_after_ms=d.ready_after_ms)
        args = {}
        if d.driver == "nvgrace-gpu":
            args = {"usemem": (d.usemem["memphys"], d.usemem["memlength"]) if d.usemem else None,
                    "resmem": (d.resmem["memphys"], d.resmem["memlength"]) if d.resmem else None}
        try:
            machine.add_device(d.name, d.driver, d.bdf, pdev=pdev, **args)
        except OSError as exc:
            raise ScenarioError(f"device {d.name}: {exc.strerror}") from None
    return machine


class ScenarioRun:
    """One execution: the machine, the trace being built and the record of the current step."""

    def __init__(self, scenario: Scenario, machine: Machine | None = None) -> None:
        load_extensions()
        self.scenario = scenario
        self.machine = machine or build_machine(scenario)
        self.trace = Trace(scenario.kernel, scenario.arch, scenario.policy, scenario.thp, scenario.description)
        self.record: StepRecord | None = None
        self.crash: KernelOops | None = None

    def run_step(self, step: Step) -> StepRecord:
        kind = STEP_KINDS[step.kind]
        if kind.handler is None:
            raise ScenarioError(f"step {step.index}: do = {step.kind!r} is not supported yet")
        m = self.machine
        args = {f.name: f.to_trace(step.fields[f.name]) for f in kind.fields}
        rec = self.record = StepRecord(step.index, step.kind, args)
        if step.note:
            rec.extra["note"] = step.note
        sig_mark, log_mark, zap_mark = len(m.tasks.journal), len(m.klog), len(m.zap_journal)
        gone = self._exited(step)
        if gone:
            ret: int | str = -errno.ESRCH       # the process exited at an earlier step
        else:
            if kind.thread_field is not None:
                tid = step.fields.get(kind.thread_field)
                if isinstance(tid, int):
                    m.tasks.thread(tid).handle_signals()    # it ran in user space: pending signals handled
            try:
                ret = kind.handler(self, step)
            except KernelOops as oops:
                self.crash = oops
                ret = "Oops"
                m.klog.printk(oops.first_line)
                rec.extra["crash"] = oops.to_trace()
        rec.ret = ret if isinstance(ret, str) else errno_name(ret)
        rec.signals = m.tasks.journal[sig_mark:]
        rec.log = m.klog.lines(log_mark)
        rec.zapped = [{"pid": z.vma.vm_mm.owner.pid, "va": f"{z.zapped.va:#x}", "length": f"{z.zapped.length:#x}",
                       "level": z.zapped.level} for z in m.zap_journal[zap_mark:]]
        self.trace.steps.append(rec)
        return rec

    def _exited(self, step: Step) -> bool:
        tasks = self.machine.tasks
        for key in ("pid", "tid"):
            value = step.fields.get(key)
            if isinstance(value, int) and value not in (tasks.processes if key == "pid" else tasks.threads):
                return True
        return False

    def run(self, on_step: Callable[[StepRecord], None] | None = None) -> Trace:
        """Run every step; ``on_step`` (e.g. a progress bar) sees each record as it lands.
        A step at which the kernel would crash (KernelOops) is the last one."""
        for step in self.scenario.steps:
            rec = self.run_step(step)
            if on_step is not None:
                on_step(rec)
            if self.crash is not None:
                self.trace.extra["crashed_at"] = step.index
                break
        self.trace.summary = self.machine.summary()
        for finish in RUN_FINISHERS:
            finish(self)
        return self.trace


def run_scenario(scenario: Scenario | str | Path,
                 on_step: Callable[[StepRecord], None] | None = None) -> Trace:
    """Run a Scenario (or a scenario file) and return its trace."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    return ScenarioRun(scenario).run(on_step)
