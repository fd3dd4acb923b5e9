"""From a scenario to what the guest replays: the devices to serve and the probe's step file.

A scenario is crosscheckable when every step is something user space can do to a real
kernel (no kind of ``NOT_FROM_USER_SPACE``), its policy is ``upstream`` (the other policies
are proposals no kernel carries) and each device can be served with the BAR layout the scenario gives it.
``plan(scenario)`` returns a Plan, or raises NotCrosscheckable with the reason.

Devices.  Each scenario device becomes one served vfio-user device on a fixed PCI slot of
the guest (slot ``FIRST_SLOT + n``, so its address is known before the boot).  A device
with ``serve = {profile = ...}`` is served with that profile; a device described by its
BARs gets a synthesized profile with memory BARs of the same sizes at the same indexes
(plus the register and MSI-X BARs every served device has, at free indexes).

Addresses.  The guest's firmware places the BARs, so physical addresses in steps
(``hard_offline_page.phys``) are written BAR-relative (``@SLOT.INDEX+OFFSET``) and the
probe resolves them from sysfs; after the boot ``guest_scenario`` rewrites the scenario
to the guest's placement and PCI addresses, and the model runs that.

The step file (one line each; numbers in hex or decimal; TID 0 = the probe's controller):

    scenario NAME
    bdf SLOT BDF                           the device's PCI address (for @SLOT.INDEX+OFFSET)
    dev SLOT BDF                           open the device (the vfio group from sysfs)
    proc PID COMM TID...                   a process with these threads
    step N mmap TID SLOT REGION OFFSET LENGTH ADDR SHARED PROT
    step N munmap|mprotect|madvise TID ADDR LENGTH [PROT|ADVICE]
    step N mremap TID OLD OLDLEN NEWLEN FLAGS NEW
    step N access TID ADDR WRITE
    step N touch TID ADDR LENGTH STRIDE WRITE
    step N prctl TID OPTION ARG2 ARG3 ARG4 ARG5
    step N write TID PATH VALUE            a sysfs/procfs write by that thread
    step N fork TID CHILDPID COMM
    step N exit TID CODE
    step N config_write 0 SLOT OFFSET SIZE VALUE
    step N reset 0 SLOT
    step N feature 0 SLOT FLAGS            VFIO_DEVICE_FEATURE
    step N sleep 0 MS
    end
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from hugepfn.abi.vfio import (VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
                              VFIO_DEVICE_FEATURE_SET)
from hugepfn.host.mm.constants import MADV_HUGEPAGE, MADV_NOHUGEPAGE
from hugepfn.host.scenario.spec import DeviceSpec, Scenario, Step
from hugepfn.host.scenario.steps import PRCTL_ARG_NAMES, PRCTL_OPTIONS, resolve

FIRST_SLOT = 0x10
PROT = {"none": 0, "r": 1, "rw": 3, "w": 2}
MADVICE_NUMBERS = {"MADV_NORMAL": 0, "MADV_DONTNEED": 4, "MADV_HUGEPAGE": MADV_HUGEPAGE,
                   "MADV_NOHUGEPAGE": MADV_NOHUGEPAGE}
SYSCTL_PATHS = {"vm.memory_failure_early_kill": "/proc/sys/vm/memory_failure_early_kill",
                "vm.memory_failure_recovery": "/proc/sys/vm/memory_failure_recovery"}
THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
HARD_OFFLINE_PATH = "/sys/devices/system/memory/hard_offline_page"
REGISTERS_SIZE = 64 << 10
MSIX_SIZE = 16 << 10

# what each scenario step kind needs from the model's side to be replayed (None: it can't be)
NOT_FROM_USER_SPACE = {
    "zap": "unmap_mapping_range has no user-space entry point",
    "poison": "the guest's CPU cannot be made to machine-check on device memory",
    "memory_failure": "memory_failure() with chosen flags and current has no user-space entry point",
    "register": "register_pfn_address_space is called by drivers, not user space",
    "unregister": "unregister_pfn_address_space is called by drivers, not user space",
    "inject": "a served device's error record needs a GHES the guest does not have",
    "collapse": "MADV_COLLAPSE of a pfnmap is not part of the crosscheck",
    "corrupt_pfn": "hwpoison-inject refuses pfns without struct page (-ENXIO) before the model's path",
    "repair": "device-side repair is not visible to the guest kernel",
}


# The guest probe moves the pid counter here between steps (the step file's "park" line, probe.c
# park_pid_counter), so that the kernel's own tasks take pids above every pid a scenario names.
PARKED_PID = 20000


class NotCrosscheckable(ValueError):
    """Why a scenario cannot be replayed on a real kernel (one line)."""


@dataclass
class PlannedDevice:
    name: str
    slot: int
    driver: str                      # the guest driver to bind ("vfio-pci", "nvgrace-gpu-vfio-pci")
    profile: dict                    # a device profile (fixtures/profiles format), served as is
    bars: dict[int, tuple[int, int]] = field(default_factory=dict)   # scenario coordinates: index -> (phys, size)

    @property
    def bdf(self) -> str:
        return f"0000:00:{self.slot:02x}.0"


@dataclass
class Plan:
    name: str
    scenario: Scenario
    devices: list[PlannedDevice]
    lines: list[str]
    vfio: bool = True

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _bar_profile(name: str, bars: list[dict]) -> dict:
    """A served profile with memory BARs where the scenario has them (64-bit prefetchable);
    the register and MSI-X BARs every served device needs go to free 32-bit indexes."""
    taken: set[int] = set()
    out = []
    for bar in sorted(bars, key=lambda b: b["index"]):
        if bar.get("io"):
            raise NotCrosscheckable(f"device {name}: BAR{bar['index']} is an I/O BAR, which the served device "
                                    "cannot have")
        size = bar["size"]
        if size & (size - 1) or size < 4096:
            raise NotCrosscheckable(f"device {name}: BAR{bar['index']} size {size:#x} is not a power of two "
                                    ">= 4 KiB")
        index = bar["index"]
        if index in taken or index == 5:
            raise NotCrosscheckable(f"device {name}: BAR{index} cannot be 64-bit here")
        taken |= {index, index + 1}
        out.append({"index": index, "kind": "memory", "size": size, "bits": 64, "prefetchable": True})
    free = [i for i in range(6) if i not in taken]
    if len(free) < 2:
        raise NotCrosscheckable(f"device {name}: no free BAR index for the register and MSI-X BARs")
    out.append({"index": free[0], "kind": "registers", "size": REGISTERS_SIZE, "bits": 32, "prefetchable": False})
    out.append({"index": free[1], "kind": "msix", "size": MSIX_SIZE, "bits": 32, "prefetchable": False})
    return {"name": f"crosscheck-{name}", "description": f"crosscheck device {name}",
            # not an NVIDIA id: the guest's PCI quirks for NVIDIA GPUs (HDA enable on resume)
            # would print lines no scenario of a bare BAR layout is about
            "pci": {"vendor_id": 0x1b36, "device_id": 0x00f0, "class_code": 0x120000},
            "msix": {"vectors": 8, "error_vector": 1}, "bar": out}


# the guest driver (its pci_driver name) for each model driver the crosscheck can bind
GUEST_DRIVERS = {"vfio-pci": "vfio-pci", "nvgrace-gpu": "nvgrace_gpu_vfio_pci"}


def _device(spec: DeviceSpec, slot: int, arch: str) -> PlannedDevice:
    serve = spec.extra.get("serve")
    if spec.driver not in GUEST_DRIVERS:
        raise NotCrosscheckable(f"device {spec.name}: driver {spec.driver} has no guest counterpart")
    if spec.driver == "nvgrace-gpu":
        # the real driver is arm64-only (NVGRACE_GPU_VFIO_PCI depends on ARM64) and takes its
        # memory from firmware properties: only a served device describes that memory
        if arch != "arm64":
            raise NotCrosscheckable(f"device {spec.name}: nvgrace-gpu is crosschecked on arm64 only")
        if not serve or spec.driver_args.get("usemem") or spec.driver_args.get("resmem"):
            raise NotCrosscheckable(f"device {spec.name}: the crosscheck's nvgrace-gpu is a served device whose "
                                    "memory BAR the firmware properties describe (no usemem/resmem)")
        from hugepfn.device.profiles import load_profile
        profile = load_profile(serve.get("profile", "nvgrace"))
        return PlannedDevice(spec.name, slot, GUEST_DRIVERS[spec.driver],
                             {"name": profile.name, "source": profile.source})
    if serve:
        from hugepfn.device.profiles import load_profile
        profile = load_profile(serve.get("profile", "tiny"))
        raw = {"name": profile.name, "source": profile.source}
        return PlannedDevice(spec.name, slot, "vfio-pci", raw)
    if not spec.bars:
        raise NotCrosscheckable(f"device {spec.name}: no BARs")
    bars = {b["index"]: (b["phys"], b["size"]) for b in spec.bars}
    return PlannedDevice(spec.name, slot, "vfio-pci", _bar_profile(spec.name, spec.bars), bars)


def _phys_token(devices: list[PlannedDevice], phys: int, where: str) -> str:
    for dev in devices:
        for index, (start, size) in dev.bars.items():
            if start <= phys < start + size:
                return f"@{dev.slot}.{index}+{phys - start:#x}"
    raise NotCrosscheckable(f"{where}: phys {phys:#x} is in no BAR of the scenario's devices")


def _prot(value: Any) -> int:
    return PROT[value] if isinstance(value, str) else int(value)


_HEX = "{:#x}".format
# Steps whose probe line is the kind and its fields in this order, each written as given.
_PLAIN_LINES: dict[str, tuple[tuple[str, Any], ...]] = {
    "munmap": (("pid", str), ("addr", _HEX), ("length", _HEX)),
    "mprotect": (("pid", str), ("addr", _HEX), ("length", _HEX), ("prot", _prot)),
    "madvise": (("pid", str), ("addr", _HEX), ("length", _HEX), ("advice", MADVICE_NUMBERS.__getitem__)),
    "mremap": (("pid", str), ("addr", _HEX), ("length", _HEX), ("new_length", _HEX), ("flags", str),
               ("new_addr", _HEX)),
    "access": (("tid", str), ("addr", _HEX), ("write", int)),
    "touch": (("tid", str), ("addr", _HEX), ("length", _HEX), ("stride", _HEX), ("write", int)),
}


def step_line(step: Step, devices: dict[str, PlannedDevice], all_devices: list[PlannedDevice],
              processes: dict[int, str]) -> str:
    f = step.fields
    n, kind = step.index, step.kind
    where = step.where
    if kind in NOT_FROM_USER_SPACE:
        raise NotCrosscheckable(f"{where}: {NOT_FROM_USER_SPACE[kind]}")
    if kind == "mmap":
        dev = devices[f["device"]]
        return (f"step {n} mmap {f['pid']} {dev.slot} {f['region']} {f['offset']:#x} {f['length']:#x} "
                f"{f['addr']:#x} {int(f['shared'])} {_prot(f.get('prot', 'rw'))}")
    if kind in _PLAIN_LINES:
        return " ".join([f"step {n} {kind}"] + [str(write(f[name])) for name, write in _PLAIN_LINES[kind]])
    if kind == "prctl":
        return (f"step {n} prctl {f['tid']} {resolve(f['option'], PRCTL_OPTIONS)} "
                f"{resolve(f['arg2'], PRCTL_ARG_NAMES)} {resolve(f['arg3'], PRCTL_ARG_NAMES)} "
                f"{f['arg4']} {f['arg5']}")
    if kind == "sysctl":
        return f"step {n} write 0 {SYSCTL_PATHS[f['name']]} {f['value']}"
    if kind == "thp":
        return f"step {n} write 0 {THP_PATH} {f['mode']}"
    if kind == "hard_offline_page":
        if f.get("device") is not None:
            token = f"@{devices[f['device']].slot}.{f['bar'] if f.get('bar') is not None else 0}+{f['phys']:#x}"
        else:
            token = _phys_token(all_devices, f["phys"], where)
        return f"step {n} write {f['current']} {HARD_OFFLINE_PATH} {token}"
    if kind == "config_write":
        dev = devices[f["device"]]
        return f"step {n} config_write 0 {dev.slot} {f['offset']:#x} {f['size']} {f['value']:#x}"
    if kind == "reset":
        return f"step {n} reset 0 {devices[f['device']].slot}"
    if kind == "low_power_entry":
        flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        return f"step {n} feature 0 {devices[f['device']].slot} {flags:#x}"
    if kind == "low_power_exit":
        flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
        return f"step {n} feature 0 {devices[f['device']].slot} {flags:#x}"
    if kind == "fork":
        return f"step {n} fork {f['pid']} {f['child']} {processes[f['pid']]}"
    if kind == "exit":
        return f"step {n} exit {f['pid']} {f.get('code', 0)}"
    if kind == "sleep":
        return f"step {n} sleep 0 {f['ms']}"
    raise NotCrosscheckable(f"{where}: step kind {kind!r} has no probe counterpart")


# steps that need the device bound to vfio-pci (an open device file)
NEEDS_VFIO = frozenset({"mmap", "config_write", "reset", "low_power_entry", "low_power_exit"})


def plan(scenario: Scenario, name: str, first_slot: int = FIRST_SLOT, vfio: bool = True) -> Plan:
    """The plan of one scenario, its devices on slots ``first_slot`` + n (``reslot`` moves them).
    ``vfio``: the kernel can bind them to vfio-pci; without it only steps that need no open
    device file can be replayed (the devices are still there, with their BARs)."""
    if scenario.policy != "upstream":
        raise NotCrosscheckable(f"policy {scenario.policy!r} is a proposal no kernel carries")
    named = [tid for proc in scenario.processes for tid in proc.threads]
    named += [step.fields["child"] for step in scenario.steps if step.kind == "fork"]
    if named and max(named) >= PARKED_PID:
        raise NotCrosscheckable(f"pid {max(named)}: the probe keeps pids from {PARKED_PID} up for the guest's "
                                "own tasks (probe.c park_pid_counter)")
    devices = [_device(spec, first_slot + i, scenario.arch) for i, spec in enumerate(scenario.devices)]
    if not vfio:
        needing = sorted({s.kind for s in scenario.steps} & NEEDS_VFIO)
        if needing:
            raise NotCrosscheckable(f"steps {', '.join(needing)} need vfio-pci, and Debian's archive has no "
                                    "modules for this kernel")
    p = Plan(name, scenario, devices, [], vfio)
    p.lines = _lines(p)
    return p


def reslot(p: Plan, slots: list[int]) -> None:
    """Put the plan's devices on ``slots`` (one per device, in order) and rewrite its lines."""
    for dev, slot in zip(p.devices, slots):
        dev.slot = slot
    p.lines = _lines(p)


def device_key(dev: PlannedDevice) -> str:
    """Devices with equal keys are interchangeable: one served device can stand for each."""
    import json
    return json.dumps([dev.driver, dev.profile], sort_keys=True)


def _lines(p: Plan) -> list[str]:
    scenario, name, devices = p.scenario, p.name, p.devices
    by_name = {d.name: d for d in devices}
    comms = {p.pid: p.comm for p in scenario.processes}
    for step in scenario.steps:
        if step.kind == "fork":
            comms[step.fields["child"]] = comms[step.fields["pid"]]
    lines = [f"scenario {name}", f"park {PARKED_PID}"]
    # the scenario's machine settings first: THP mode and the sysctls, then the devices open
    lines.append(f"step 0 write 0 {THP_PATH} {scenario.thp}")
    for sysctl, path in SYSCTL_PATHS.items():
        default = {"vm.memory_failure_early_kill": 0, "vm.memory_failure_recovery": 1}[sysctl]
        lines.append(f"step 0 write 0 {path} {scenario.sysctl.get(sysctl, default)}")
    lines += [f"bdf {d.slot} {d.bdf}" for d in devices]     # for BAR-relative addresses
    if p.vfio:
        lines += [f"dev {d.slot} {d.bdf}" for d in devices]
    for p in scenario.processes:
        lines.append(f"proc {p.pid} {_comm(p.comm)} {' '.join(map(str, p.threads))}")
    for step in scenario.steps:
        lines.append(step_line(step, by_name, devices, comms))
    lines.append("end")
    return lines


def _comm(comm: str) -> str:
    """The kernel keeps 15 bytes of a comm; the step file needs it without spaces."""
    if not re.fullmatch(r"[\x21-\x7e]{1,15}", comm):
        raise NotCrosscheckable(f"comm {comm!r}: the probe needs 1-15 printable characters without spaces")
    return comm


def nvgrace_memory(dev: PlannedDevice, placed: dict) -> tuple[int, int] | None:
    """(nvidia,gpu-mem-base-pa, nvidia,gpu-mem-size) the crosscheck gives a served nvgrace
    device: where the guest placed its memory BAR, and the profile's memory behind it."""
    from hugepfn.device.profiles import load_profile
    bar = load_profile(dev.profile["source"] or dev.profile["name"]).memory_bars[0]
    where = placed.get(bar.index)
    return None if where is None else (where.start, bar.memory_size)


@dataclass(frozen=True)
class GuestBar:
    slot: int
    index: int
    start: int
    size: int


def guest_scenario(p: Plan, bars: list[GuestBar]) -> Scenario:
    """The scenario as the guest saw it: each device at its guest PCI address with the BARs
    where the guest's firmware placed them, physical addresses in steps moved with them."""
    by_slot: dict[int, dict[int, GuestBar]] = {}
    for bar in bars:
        by_slot.setdefault(bar.slot, {})[bar.index] = bar
    scenario = copy.deepcopy(p.scenario)
    moves: list[tuple[int, int, int]] = []          # (scenario start, size, guest start)
    for spec, dev in zip(scenario.devices, p.devices):
        placed = by_slot.get(dev.slot, {})
        if spec.driver == "nvgrace-gpu":
            memory = nvgrace_memory(dev, placed)
            if memory is not None:
                from hugepfn.host.drivers.nvgrace_gpu import regions_from_firmware
                use, res = regions_from_firmware(*memory)
                spec.driver_args = {**spec.driver_args, "usemem": use, "resmem": res}
        new_bars = []
        for index in sorted(i for i, b in placed.items() if b.size):
            bar = placed[index]
            kind = next((b["kind"] for b in dev.profile.get("bar", []) if b["index"] == index), "memory")
            if dev.bars and index not in dev.bars:
                continue                           # the served device's own register / MSI-X BARs
            if kind != "memory" and dev.bars:
                continue
            new_bars.append({"index": index, "phys": bar.start, "size": bar.size, "io": False})
            if index in dev.bars:
                moves.append((dev.bars[index][0], dev.bars[index][1], bar.start))
        spec.bars = new_bars
        spec.bdf = dev.bdf
        spec.extra = {k: v for k, v in spec.extra.items() if k != "serve"}
    for step in scenario.steps:
        if step.kind == "hard_offline_page" and step.fields.get("device") is None:
            phys = step.fields["phys"]
            for start, size, guest in moves:
                if start <= phys < start + size:
                    step.fields["phys"] = guest + (phys - start)
                    break
    return scenario
