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
MemoryFailureEvent per record, for `hugepfn monitor`).  A served nvgrace-gpu device without
usemem/resmem takes its first memory BAR, where firmware placed it, as usemem (region 4).  Traces carry no socket paths, fds or
times: the placement depends only on the profile, so they are deterministic.
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

from ..drivers.pci import PciDevice
from .errors import ScenarioError
from .fields import Field, convert_fields
from .runner import DEVICE_PREPARERS, RUN_FINISHERS
from .spec import DEVICE_EXTENSION_FIELDS
from .steps import STEP_KINDS, register_step_kind

if TYPE_CHECKING:
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


@dataclass
class ServedDevice:
    """One served device of a run: the device, its servers, the host's client and error source."""
    name: str
    device: Any                          # hugepfn.device.gpu.GpuDevice
    server: Any
    control_server: Any
    client: Any                          # hugepfn.host.vfio_user.VfioUserClient
    placements: dict
    directory: Path
    options: dict
    ghes: Any = None                     # hugepfn.host.ghes.GhesErrorSource
    publisher: Any = None
    control: Any = None                  # a ControlClient, opened on first use
    closed: bool = field(default=False, init=False)

    @property
    def socket_path(self) -> Path:
        return self.directory / "vfio-user.sock"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for part in (self.control, self.client, self.control_server, self.server, self.publisher, self.device):
            if part is not None:
                try:
                    part.close()
                except OSError:
                    pass
        shutil.rmtree(self.directory, ignore_errors=True)


def served_devices(machine: "Machine") -> dict[str, ServedDevice]:
    return machine.extensions.setdefault(EXTENSION_KEY, {})


def start_served(machine: "Machine", spec: "DeviceSpec", options: dict) -> ServedDevice:
    """Serve the device, attach to it and place its BARs (the part before the driver binds)."""
    from hugepfn.device.control import ControlServer, control_path
    from hugepfn.device.gpu import GpuDevice
    from hugepfn.device.vfio_user.backends import select_backend

    from ..vfio_user.client import VfioUserClient
    from ..vfio_user.firmware import assign_bar_addresses

    choice, _why = select_backend(options["backend"])
    directory = Path(tempfile.mkdtemp(prefix="hugepfn-served-"))
    device = server = control = client = None
    try:
        device = GpuDevice.from_profile(options["profile"])
        socket_path = directory / "vfio-user.sock"
        server = choice.Server(device, socket_path)
        server.start()
        control = ControlServer(device, control_path(socket_path), server=server).start()
        client = VfioUserClient.attach(socket_path)
        # one firmware pass per device, each starting where the previous device's BARs end
        cursor = machine.extensions.setdefault("served_mmio_cursor", {})
        placements = {p.index: p for p in assign_bar_addresses(client, **cursor)}
        for p in placements.values():
            key = "mmio64_base" if p.is_64bit else "mmio32_base"
            cursor[key] = max(cursor.get(key, 0), p.address + p.size)
    except BaseException:
        for part in (client, control, server, device):
            if part is not None:
                part.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    served = ServedDevice(spec.name, device, server, control, client, placements, directory, options)
    served_devices(machine)[spec.name] = served
    _watch_memory(machine, device, placements)
    # a run that fails half-way still stops the servers when the machine goes away
    weakref.finalize(machine, served.close)
    return served


def _watch_memory(machine: "Machine", device, placements: dict) -> None:
    """The device's poison model answers for its memory (when the memory-failure model is loaded)."""
    mf = machine.extensions.get("memory_failure")
    if mf is None:
        return
    from ..memory_failure.hardware import device_memory
    for memory in device_memory(device, placements):
        mf.hardware.add_device_memory(memory)


def prepare_device(machine: "Machine", spec: "DeviceSpec") -> PciDevice | None:
    """DEVICE_PREPARERS hook: a served device's PCI view (BARs where firmware put them)."""
    raw = spec.extra.get("serve")
    if raw is None:
        return None
    where = f"device {spec.name}: serve"
    options = convert_fields(SERVE_FIELDS, raw, where)
    if spec.bars:
        raise ScenarioError(f"{where}: a served device gets its BARs from firmware placement; drop `bars`")
    try:
        served = start_served(machine, spec, options)
    except (ValueError, OSError) as exc:
        raise ScenarioError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
    if spec.driver == "nvgrace-gpu" and spec.usemem is None and spec.resmem is None:
        # nvgrace-gpu exposes device memory as usemem (region 4) at the host physical address
        # firmware reports; for a served device that is where its memory BAR was placed.
        bar = served.device.profile.memory_bars[0]
        spec.usemem = {"memphys": served.placements[bar.index].address, "memlength": bar.memory_size}
    from ..attach import host_pci_device
    return host_pci_device(served.client, served.placements, spec.bdf, is_virtfn=spec.virtfn,
                           reset_works=spec.reset_works)


def _error_source(run: "ScenarioRun", served: ServedDevice):
    """The GHES-like error source, created once the driver is bound (first use)."""
    if served.ghes is None:
        from ..ghes import GhesErrorSource

        opts = served.options
        if opts["events"] != "none":
            from hugepfn.host.events import publisher
            served.publisher = publisher(opts["events"])
        served.ghes = GhesErrorSource(run.machine, served.name, served.client, mode=opts["ghes"],
                                      publisher=served.publisher, irq=opts["irq"],
                                      error_vector=served.device.profile.error_vector,
                                      mark_hardware=False)     # the device's own poison model answers loads
    return served.ghes


def _served(run: "ScenarioRun", step: "Step") -> ServedDevice:
    name = step.fields["device"]
    served = served_devices(run.machine).get(name)
    if served is None:
        raise ScenarioError(f"{step.where}: device: {name!r} is not a served device (give it `serve = {{...}}`)")
    return served


def _control(served: ServedDevice):
    """The device's control channel (opened on first use)."""
    if served.control is None:
        from hugepfn.device.control import ControlClient, control_path
        served.control = ControlClient(control_path(served.socket_path))
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
    rewrites the lines, as seed 004's DAX memory allows): loads there stop machine-checking at
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


def _close_all(run: "ScenarioRun") -> None:
    """RUN_FINISHERS hook: stop every served device of the run; say where BARs were placed."""
    served = served_devices(run.machine)
    if not served:
        return
    run.trace.extra["served"] = {
        name: {"profile": s.options["profile"], "backend": s.server.backend_name,
               "bars": [{"index": p.index, "address": f"{p.address:#x}", "size": f"{p.size:#x}"}
                        for p in s.placements.values()]}
        for name, s in served.items()}
    for s in served.values():
        s.close()


def _check_error_type(value: str) -> str | None:
    from hugepfn.device.cper import MEMORY_ERROR_TYPES
    return None if value in MEMORY_ERROR_TYPES else f"must be one of {', '.join(MEMORY_ERROR_TYPES)}, got {value!r}"


def _injection_fields() -> tuple[Field, ...]:
    return (Field("device", "str"), Field("bar", "int"), Field("offset"),
            Field("granularity", required=False, default=DEFAULT_GRANULARITY),
            Field("error_type", "str", required=False, default="multi-ecc", check=_check_error_type))


def _wrapped(name: str, handler):
    """The memory-failure model's wrapper (trace_events, events, panic handling), when loaded."""
    try:
        from ..memory_failure.steps import _wrap
    except ImportError:
        return handler
    return _wrap(name, handler)


def install() -> None:
    if not any(f.name == "serve" for f in DEVICE_EXTENSION_FIELDS):
        DEVICE_EXTENSION_FIELDS.append(Field("serve", "any", required=False, default=None, check=_check_serve))
    if prepare_device not in DEVICE_PREPARERS:
        DEVICE_PREPARERS.append(prepare_device)
    if _close_all not in RUN_FINISHERS:
        RUN_FINISHERS.append(_close_all)
    handler = _wrapped("inject", do_inject)
    if "inject" not in STEP_KINDS or STEP_KINDS["inject"].handler is None:
        register_step_kind("inject", _injection_fields() + (Field("current", "int", required=False, default=None),),
                           handler, thread_field="current",
                           doc="poison a served device through its control channel; the host's GHES-like error "
                               "source handles the record in the same step (extension)")
    if "inject_queued" not in STEP_KINDS or STEP_KINDS["inject_queued"].handler is None:
        register_step_kind("inject_queued", _injection_fields(), _wrapped("inject_queued", do_inject),
                           doc="poison a served device; its record waits in the device's queue (extension)")
    if "process_errors" not in STEP_KINDS or STEP_KINDS["process_errors"].handler is None:
        register_step_kind("process_errors", (Field("device", "str"),
                                              Field("current", "int", required=False, default=None)),
                           _wrapped("process_errors", do_process_errors), thread_field="current",
                           doc="the host's error source reads and handles the records the device queued (extension)")
    if "scrub" not in STEP_KINDS or STEP_KINDS["scrub"].handler is None:
        register_step_kind("scrub", (Field("device", "str"), Field("bar", "int"), Field("offset"),
                                     Field("length", required=False, default=DEFAULT_GRANULARITY)),
                           _wrapped("scrub", do_scrub),
                           doc="the served device repairs a range of its memory itself (extension)")


install()
