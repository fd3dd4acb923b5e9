"""Served devices in scenario files: the device side runs for real, the host attaches over vfio-user.

    [[device]]
    name   = "gpu"
    driver = "vfio-pci"
    serve  = { profile = "tiny", backend = "python" }     # + ghes, irq, events (below)

For such a device the runner starts the emulated GPU in-process (its vfio-user server on a
private temporary socket, and its control server on SOCKET.ctl as `hugepfn serve` does),
attaches a vfio-user client, lets firmware size and place the BARs, and binds the host's
driver to a PCI device with those bus addresses (no `bars = [...]`: the placement decides).
A GhesErrorSource (hugepfn.host.ghes) listens on the device's error interrupt.

The step ``inject`` {device, bar, offset, granularity = "4K", error_type = "multi-ecc",
current} poisons through the control channel; the device queues its CPER record and raises
the interrupt, and within the same step the error source drains the queue and calls
memory_failure, so the step's trace holds the GHES and memory-failure log lines, the signals,
the zapped ranges (policy hard-offline) and, under ``ghes``, each record's facts and event.
``inject_queued`` (the same fields but ``current``) leaves the record in the device's queue:
the memory is bad at once (a load of it machine-checks, hugepfn.host.memory_failure.hardware),
and the report arrives with a later ``process_errors`` {device, current} step — consumption
before report.  ``scrub``
{device, bar, offset, length = "4K"} has the device repair that range itself.

``serve`` fields: ``profile`` (default "tiny"), ``backend`` ("python" | "libvfio-user" | "auto",
default "python"), ``ghes`` ("async" | "sync", default "async": see hugepfn.host.ghes),
``irq`` ("msix" | "err", default "msix": the error MSI-X vector or the vfio ERR index),
``events`` ("none" | "auto" | "netlink" | "unix", default "none": publish a
MemoryFailureEvent per record, for `hugepfn monitor`).  The driver learns where the served
device's memory BARs were placed (its adopt_served_memory).  Traces carry no socket paths, fds or
times: the placement depends only on the profile, so they are deterministic.

Serving is hugepfn.device.serving.serve and binding hugepfn.host.attach.bind_served, the helpers
`hugepfn serve` and the pytest plugin use too.
"""
from __future__ import annotations

import errno
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hugepfn.device.poison import DEFAULT_GRANULARITY

from ..attach import BoundDevice, bind_served, error_source
from .errors import ScenarioError
from .fields import Field, convert_fields
from .steps import StepKind, step_kind

if TYPE_CHECKING:
    from hugepfn.device.serving import Serving

    from ..drivers.vfio_pci_core import VfioPciCoreDevice
    from ..machine import Machine
    from .runner import ScenarioRun
    from .spec import DeviceSpec, Step

EXTENSION_KEY = "served_devices"
SERVE_FIELDS = (
    Field("profile", "str", required=False, default="tiny"),
    Field("backend", "str", required=False, default="python", choices=("python", "libvfio-user", "auto")),
    Field("ghes", "str", required=False, default="async", choices=("async", "sync")),
    Field("irq", "str", required=False, default="msix", choices=("msix", "err")),
    Field("events", "str", required=False, default="none", choices=("none", "auto", "netlink", "unix")),
)


def _check_serve(value: Any) -> str | None:
    if value is not None and not isinstance(value, dict):
        return f"expected a table such as {{ profile = \"tiny\", backend = \"python\" }}, got {value!r}"
    return None


# the [[device]] field this model adds
SERVE_FIELD = Field("serve", "any", required=False, default=None, check=_check_serve)


@dataclass
class ServedDevice:
    """One served device of a run: how it is served, how the host bound it, its error source."""
    name: str
    serving: "Serving"
    directory: Path
    options: dict
    bound: BoundDevice | None = None
    publisher: Any = None
    control: Any = None                  # a ControlClient, opened on first use
    closed: bool = field(default=False, init=False)

    @property
    def device(self):
        return self.serving.device

    @property
    def ghes(self):
        return None if self.bound is None else self.bound.error_source

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for part in (self.control, self.bound, self.serving, self.publisher):
            if part is not None:
                try:
                    part.close()
                except OSError:
                    pass
        shutil.rmtree(self.directory, ignore_errors=True)


def served_devices(machine: "Machine") -> dict[str, ServedDevice]:
    return machine.extensions.setdefault(EXTENSION_KEY, {})


def prepare_device(machine: "Machine", spec: "DeviceSpec", driver_args: dict) -> "VfioPciCoreDevice | None":
    """Preparer: serve the device of a [[device]] table with ``serve = {...}`` and bind its driver
    to it over vfio-user (BARs where firmware put them); None for any other device."""
    from hugepfn.device.serving import serve

    raw = spec.extra.get("serve")
    if raw is None:
        return None
    where = f"device {spec.name}: serve"
    options = convert_fields(SERVE_FIELDS, raw, where)
    if spec.bars:
        raise ScenarioError(f"{where}: a served device gets its BARs from firmware placement; drop `bars`")
    directory = Path(tempfile.mkdtemp(prefix="hugepfn-served-"))
    try:
        serving = serve(options["profile"], directory / "vfio-user.sock", options["backend"])
    except (ValueError, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise ScenarioError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
    served = served_devices(machine)[spec.name] = ServedDevice(spec.name, serving, directory, options)
    weakref.finalize(machine, served.close)     # a run that fails half-way still stops the servers
    served.bound = bind_served(machine, spec.name, serving.socket_path, spec.driver, spec.bdf,
                               device_model=serving.device, driver_args=driver_args, served=served,
                               is_virtfn=spec.virtfn, reset_works=spec.reset_works)
    return served.bound.host_device


def _error_source(run: "ScenarioRun", served: ServedDevice):
    """The GHES-like error source, created once the driver is bound (first use)."""
    if served.bound.error_source is None:
        opts = served.options
        if opts["events"] != "none":
            from hugepfn.host.events import publisher
            served.publisher = publisher(opts["events"])
        error_source(run.machine, served.bound, served.device.profile.error_vector, opts["ghes"], opts["irq"],
                     served.publisher)
    return served.bound.error_source


def _served(run: "ScenarioRun", step: "Step") -> ServedDevice:
    name = step.fields["device"]
    served = served_devices(run.machine).get(name)
    if served is None:
        raise ScenarioError(f"{step.where}: device: {name!r} is not a served device (give it `serve = {{...}}`)")
    return served


def _control(served: ServedDevice):
    """The device's control channel (opened on first use)."""
    if served.control is None:
        served.control = served.serving.control()
    return served.control


def do_inject(run: "ScenarioRun", step: "Step") -> int:
    from hugepfn.device.control import ControlError

    f = step.fields
    served = _served(run, step)
    ghes = _error_source(run, served)
    try:
        reply = _control(served).inject(bar=f["bar"], offset=f["offset"], granularity=f["granularity"],
                                      error_type=f["error_type"])
    except ControlError as exc:
        run.record.extra["error"] = str(exc)
        return -errno.EINVAL
    run.record.extra["injected"] = {"bar": reply["bar"], "offset": f"{reply['offset']:#x}",
                                    "length": f"{reply['length']:#x}", "dpa": f"{reply['dpa']:#x}",
                                    "sequence": reply["sequence"]}
    if run.record.do == "inject":       # inject_queued leaves the record in the device's queue
        ghes.wait(5.0)          # raised before the control reply was sent; bounded all the same
        _handle_records(run, ghes, f["current"])
    return 0


def _handle_records(run: "ScenarioRun", ghes, current: int | None) -> None:
    outcomes = ghes.process_pending(current=None if current is None else run.machine.tasks.thread(current))
    run.record.extra["ghes"] = [o.to_trace() for o in outcomes]


def do_process_errors(run: "ScenarioRun", step: "Step") -> int:
    """The host's error source handles the records the device has queued (the report arrives)."""
    _handle_records(run, _error_source(run, _served(run, step)), step.fields["current"])
    return 0


def do_scrub(run: "ScenarioRun", step: "Step") -> int:
    """The device repairs [offset, offset + length) of a memory BAR itself (a patrol scrub that
    rewrites the lines, as DAX memory allows: Dan Williams, "Replace and improve mcsafe with copy_safe()", May 2020): loads there stop machine-checking at
    once; the host's driver keeps what it recorded until it hears of the repair (``repair``)."""
    from hugepfn.device.control import ControlError

    f = step.fields
    served = _served(run, step)
    try:
        reply = _control(served).repair(bar=f["bar"], offset=f["offset"], length=f["length"])
    except ControlError as exc:
        run.record.extra["error"] = str(exc)
        return -errno.EINVAL
    run.record.extra["cleared"] = f"{reply['cleared']:#x}"
    return 0


def close_all(run: "ScenarioRun") -> None:
    """Run finisher: stop every served device of the run; say where BARs were placed."""
    served = served_devices(run.machine)
    if not served:
        return
    run.trace.extra["served"] = {
        name: {"profile": s.options["profile"], "backend": s.serving.backend_name,
               "bars": [{"index": p.index, "address": f"{p.address:#x}", "size": f"{p.size:#x}"}
                        for p in s.bound.placements.values()]}
        for name, s in served.items() if s.bound is not None}
    for s in served.values():
        s.close()


def _check_error_type(value: str) -> str | None:
    from hugepfn.abi.cper import MEMORY_ERROR_TYPES
    return None if value in MEMORY_ERROR_TYPES else f"must be one of {', '.join(MEMORY_ERROR_TYPES)}, got {value!r}"


def _injection_fields() -> tuple[Field, ...]:
    return (Field("device", "str"), Field("bar", "int"), Field("offset"),
            Field("granularity", required=False, default=DEFAULT_GRANULARITY),
            Field("error_type", "str", required=False, default="multi-ecc", check=_check_error_type))


STEP_KINDS: tuple[StepKind, ...] = (
    step_kind("inject", _injection_fields() + (Field("current", "int", required=False, default=None),), do_inject,
              thread_field="current",
              doc="poison a served device through its control channel; the host's GHES-like error "
                  "source handles the record in the same step (extension)"),
    step_kind("inject_queued", _injection_fields(), do_inject,
              doc="poison a served device; its record waits in the device's queue (extension)"),
    step_kind("process_errors", (Field("device", "str"), Field("current", "int", required=False, default=None)),
              do_process_errors, thread_field="current",
              doc="the host's error source reads and handles the records the device queued (extension)"),
    step_kind("scrub", (Field("device", "str"), Field("bar", "int"), Field("offset"),
                        Field("length", required=False, default=DEFAULT_GRANULARITY)),
              do_scrub, doc="the served device repairs a range of its memory itself (extension)"),
)
