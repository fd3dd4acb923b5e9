"""A host for tests: a Machine with served devices attached over vfio-user, processes that
mmap their BARs, and poison injected through the device and handled by the host.

    host = Host(Machine(kernel="7.0", policy="hard-offline"))
    gpu = host.attach(served)                    # a ServedDevice
    proc = host.spawn(4242, "qemu", [4242, 4243])
    bar = proc.mmap_bar(gpu, 2)                  # the whole BAR, 1 GiB aligned
    bar.access(0x200000)                         # AccessResult: ret, calls, leaf, signals
    result = host.poison(gpu, bar=2, offset=0x201000)
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hugepfn.device.poison import DEFAULT_GRANULARITY
from hugepfn.host.machine import AccessResult, Machine, TouchResult
from hugepfn.host.memory_failure import memory_failure_of, region_space
from hugepfn.host.mm.constants import PAGE_SIZE, PUD_SIZE

from . import wiring
from .wiring import BoundDevice

if TYPE_CHECKING:
    from hugepfn.host.tasks import Process, Signal

    from .served import ServedDevice

# User mappings go to 1 GiB-aligned slots from here, so every level can map them.
MMAP_BASE = 0x7F00_0000_0000


class HostError(OSError):
    """A host operation failed with an errno (the message says which call and why)."""


class PoisonConsumed(HostError):
    """A load through a BAR mapping read a poisoned line: the machine check was handled
    (``result``: the AccessResult, with ``.signals``); the load returned no data."""

    def __init__(self, addr: int, result: AccessResult) -> None:
        super().__init__(errno.EIO, f"load at {addr:#x} consumed poisoned memory (machine check)")
        self.addr = addr
        self.result = result

    @property
    def signals(self) -> list["Signal"]:
        return self.result.signals


@dataclass
class PoisonResult:
    """What one poison or error-processing call did: ``Host.poison`` and ``Host.process_errors``
    both return one.  ``injected``: what the device poisoned (bar, offset, length, dpa,
    granularity, sequence, as the control channel reports it; None for process_errors);
    ``records``: one hugepfn.host.ghes.ErrorOutcome per error record the host's error source
    read and handled ([] when nothing was processed); ``interrupted``: whether the device's
    error interrupt reached the host."""
    injected: dict | None = None
    records: list = field(default_factory=list)
    interrupted: bool = False

    @property
    def pfns(self) -> list[int]:
        """The pfn of each record's address (what memory_failure is called with)."""
        return [rec.pfn for rec in self.records]

    @property
    def poisoned_pfns(self) -> list[int]:
        """Every host pfn the records cover (the hardware poison)."""
        return [pfn for rec in self.records for pfn in rec.pfns]

    @property
    def rets(self) -> list[int | None]:
        """memory_failure's return per record (None: not called)."""
        return [rec.ret for rec in self.records]

    @property
    def signals(self) -> list["Signal"]:
        return [s for rec in self.records for s in rec.signals]

    @property
    def events(self) -> list:
        """The MemoryFailureEvent of each record (stamped when the host publishes events)."""
        return [rec.event for rec in self.records if rec.event is not None]


@dataclass
class BarMapping:
    """``length`` bytes of BAR ``bar`` from ``offset``, mapped at ``addr`` in ``proc``."""
    proc: "Proc"
    device: BoundDevice
    bar: int
    offset: int
    addr: int
    length: int

    def va(self, bar_offset: int) -> int:
        """The user address of BAR offset ``bar_offset`` (must lie inside this mapping)."""
        if not self.offset <= bar_offset < self.offset + self.length:
            raise ValueError(f"BAR offset {bar_offset:#x} is outside this mapping "
                             f"[{self.offset:#x}, {self.offset + self.length:#x})")
        return self.addr + bar_offset - self.offset

    def access(self, bar_offset: int = 0, write: bool = False, tid: int | None = None) -> AccessResult:
        return self.proc.access(self.va(bar_offset), write, tid)

    def touch(self, start: int = 0, length: int | None = None, stride: int = PAGE_SIZE,
              write: bool = False, tid: int | None = None) -> TouchResult:
        """Access every ``stride`` bytes of [start, start + length) (BAR offsets; default: all)."""
        if length is None:
            length = self.offset + self.length - start
        return self.proc.touch(self.va(start), length, stride, write, tid)

    def write(self, bar_offset: int, data: bytes) -> None:
        """Store bytes through the host's real mmap of the BAR (see BoundDevice.host_write).

        Stores to poisoned lines are posted writes: nothing machine-checks, the data lands and
        the poison stays, except on a device whose memory is repaired by writes (profile
        ``repair_by_write``, e.g. ``rebar``), where every cacheline the store covers whole is
        good again, as a REGION_WRITE of the same bytes makes it."""
        self.va(bar_offset)
        self.va(bar_offset + len(data) - 1)
        self.device.host_write(self.bar, bar_offset, data)
        device = self.device.served.device
        if device.profile.repair_by_write:
            device.poison.repair_covered(self.bar, bar_offset, len(data))

    def read(self, bar_offset: int, count: int, tid: int | None = None) -> bytes:
        """Load ``count`` bytes through the host's real mmap of the BAR, as thread ``tid``
        (default: the main thread).  A poisoned line machine-checks as a CPU load does: the
        consumption is handled (memory_failure with MF_ACTION_REQUIRED for that thread, the
        SIGBUS that follows) and PoisonConsumed is raised with the access's result."""
        self.va(bar_offset)
        self.va(bar_offset + count - 1)
        bad = self._first_bad_line(bar_offset, count)
        if bad is not None:
            result = self.access(bad, tid=tid)          # the CPU's load of that line
            if result.consumed:
                raise PoisonConsumed(self.va(bad), result)
        return self.device.host_read(self.bar, bar_offset, count)

    def _first_bad_line(self, bar_offset: int, count: int) -> int | None:
        """BAR offset of the first poisoned cacheline the load covers, or None."""
        base = self.device.bar_address(self.bar)
        for memory in self.proc.host.mf.hardware.devices:
            if memory.address == base:
                phys = memory.first_bad(base + bar_offset, base + bar_offset + count)
                return None if phys is None else phys - base
        return None


class Proc:
    """A process of the host: ``pid``, ``tids`` (the first is the main thread)."""

    def __init__(self, host: "Host", process: "Process") -> None:
        self.host = host
        self.process = process
        self.pid = process.pid
        self.comm = process.comm
        self.tids = [t.tid for t in process.threads]
        self._next_addr = MMAP_BASE
        self.mappings: list[BarMapping] = []

    def __repr__(self) -> str:
        return f"<Proc {self.comm}:{self.pid} threads={self.tids}>"

    @property
    def mm(self):
        return self.process.mm

    def mmap_bar(self, device: BoundDevice | str, bar: int, length: int | None = None, addr: int | None = None,
                 offset: int = 0) -> BarMapping:
        """mmap(addr, length, RW, MAP_SHARED|MAP_FIXED, devfd, bar << 40 | offset).  ``length``
        defaults to the rest of the BAR, ``addr`` to the next free 1 GiB-aligned slot.
        Raises HostError with the errno the kernel model returned."""
        dev = self.host.device(device)
        size = dev.host_device.region_size(bar)
        if length is None:
            length = size - offset
        if addr is None:
            addr = self._next_addr
        ret = self.host.machine.mmap(self.pid, dev.name, bar, offset, length, addr)
        if ret:
            raise HostError(-ret, f"mmap of {dev.name} BAR {bar} [{offset:#x}, +{length:#x}) at {addr:#x} "
                                  f"by pid {self.pid}: {errno.errorcode.get(-ret, ret)}")
        end = addr + length
        self._next_addr = max(self._next_addr, -(-end // PUD_SIZE) * PUD_SIZE)
        mapping = BarMapping(self, dev, bar, offset, addr, length)
        self.mappings.append(mapping)
        return mapping

    def access(self, addr: int, write: bool = False, tid: int | None = None) -> AccessResult:
        """One load (or store) at ``addr`` by thread ``tid`` (default: the main thread)."""
        return self.host.machine.access(self.pid if tid is None else tid, addr, write)

    def touch(self, addr: int, length: int, stride: int = PAGE_SIZE, write: bool = False,
              tid: int | None = None) -> TouchResult:
        return self.host.machine.touch_range(self.pid if tid is None else tid, addr, addr + length, stride, write)

    def set_early_kill(self, tid: int | None = None, early: bool = True) -> None:
        """prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY or _LATE) on thread ``tid``."""
        from hugepfn.host.scenario.steps import (PR_MCE_KILL, PR_MCE_KILL_EARLY, PR_MCE_KILL_LATE,
                                                 PR_MCE_KILL_SET, prctl)

        thread = self.host.machine.tasks.thread(self.pid if tid is None else tid)
        ret = prctl(thread, PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY if early else PR_MCE_KILL_LATE)
        if ret:
            raise HostError(-ret, f"prctl(PR_MCE_KILL) on tid {thread.tid}: {errno.errorcode.get(-ret, ret)}")

    def leaf(self, addr: int):
        """What maps ``addr`` in this process now (a Leaf with level/va/pfn), or None."""
        return self.mm.pgtable.lookup(addr)

    @property
    def signals(self) -> list["Signal"]:
        """Every signal sent to a thread of this process, in order."""
        tids = set(self.tids)
        return [s for s in self.host.machine.tasks.journal if s.tid in tids]


class Host:
    """A Machine plus the served devices bound to it and the processes tests spawn."""

    def __init__(self, machine: Machine, publisher=None, events: str | None = None,
                 events_dir: str | os.PathLike | None = None, netns: str | None = None) -> None:
        self.machine = machine
        self.mf = memory_failure_of(machine)
        self.publisher = publisher
        self.events, self.events_dir, self.netns = events, events_dir, netns
        self.devices: dict[str, BoundDevice] = {}
        self.procs: dict[int, Proc] = {}
        self.registrations: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:
        return (f"<Host kernel={self.machine.profile.name} arch={self.machine.arch.name} "
                f"policy={self.machine.policy} devices={list(self.devices)}>")

    # -- devices ----------------------------------------------------------------------------------
    def attach(self, served: "ServedDevice", name: str = "gpu", driver: str = "vfio-pci",
               bdf: str | None = None, register: bool = True, ghes: str = "async") -> BoundDevice:
        """Attach ``served`` over vfio-user and bind ``driver`` to it as device ``name`` at ``bdf``
        (default: bus 1 for the first device, 2 for the second, ...).  Each device's BARs are
        placed after the previous device's, so their pfns never overlap.

        ``register`` registers each memory BAR's pfns for memory_failure (what a variant
        driver does; plain upstream vfio-pci registers nothing, so its pfns are Ignored).
        The return of each registration is kept in ``registrations[(name, bar)]`` (0, or
        -EOPNOTSUPP on kernels before 6.19).  ``ghes`` is the error source's mode: "async"
        (memory_failure from a kworker) or "sync" (arm64 SEA: task work on the consumer)."""
        if name in self.devices:
            raise ValueError(f"a device named {name!r} is already attached")
        bdf = bdf or f"0000:{len(self.devices) + 1:02x}:00.0"
        bound = wiring.bind(self.machine, served, name, driver, bdf)
        self.devices[name] = bound
        if register:
            for bar in served.device.memory:
                space = region_space(bound.host_device, bar)
                self.registrations[(name, bar)] = self.machine.register_pfn_address_space(space)
        bound.error_source = wiring.error_source(self.machine, bound, self.publisher, ghes)
        return bound

    def device(self, device: BoundDevice | str) -> BoundDevice:
        if isinstance(device, BoundDevice):
            return device
        try:
            return self.devices[device]
        except KeyError:
            raise ValueError(f"no attached device {device!r} (attached: {', '.join(self.devices) or 'none'})") from None

    # -- processes ----------------------------------------------------------------------------------
    def spawn(self, pid: int, comm: str = "app", threads: list[int] | None = None) -> Proc:
        """A user process with threads ``threads`` (default: just ``pid``)."""
        proc = Proc(self, self.machine.create_process(pid, comm, threads))
        self.procs[pid] = proc
        return proc

    # -- poison ----------------------------------------------------------------------------------------
    def poison(self, device: BoundDevice | str = "gpu", bar: int = 2, offset: int = 0,
               granularity: int = DEFAULT_GRANULARITY,
               process: bool = True, current: int | None = None, interrupt_timeout: float = 5.0) -> PoisonResult:
        """Poison the naturally aligned ``granularity`` block at BAR ``bar`` + ``offset`` of the
        served device through its control socket (what `hugepfn inject` does); with
        ``process`` the host's error source then reads the error queue over vfio-user and
        runs memory_failure for the record's pfn.  ``current`` (a tid) is the consuming
        thread for a "sync" error source.  ``interrupted`` in the result says whether the
        device's error interrupt reached the host within ``interrupt_timeout`` seconds."""
        dev = self.device(device)
        with dev.served.control() as control:
            injected = control.inject(bar=bar, offset=offset, granularity=granularity)
        result = PoisonResult(injected)
        if process:
            result.interrupted = dev.error_source.wait(interrupt_timeout)
            result.records = self.process_errors(dev, current).records
        return result

    def process_errors(self, device: BoundDevice | str = "gpu", current: int | None = None) -> PoisonResult:
        """Let the host's error source handle every pending record of ``device`` (records
        queued while nothing processed them, or by `hugepfn inject` from outside): the report
        arrives.  Returns a PoisonResult without ``injected``."""
        source = self.device(device).error_source
        records = source.process_pending() if current is None else source.process_pending(current)
        return PoisonResult(None, records, source.interrupts > 0)

    def pfn(self, device: BoundDevice | str, bar: int, offset: int = 0) -> int:
        return self.device(device).bar_pfn(bar, offset)

    def subscribe(self):
        """A subscriber on the transport this host publishes to (its events dir / netns);
        create it before the poison so it hears the event."""
        from hugepfn.host.events import subscriber

        if self.events is None:
            raise ValueError("this host publishes no events: create it with events='unix' or 'netlink'")
        return subscriber(self.events, netns=self.netns, events_dir=self.events_dir)

    # -- views ----------------------------------------------------------------------------------------
    @property
    def signals(self) -> list["Signal"]:
        """Every signal the machine sent, in order."""
        return list(self.machine.tasks.journal)

    def log(self, since: int = 0) -> list[str]:
        """Kernel log lines from index ``since``."""
        return self.machine.klog.lines(since)

    def close(self) -> None:
        for dev in self.devices.values():
            dev.close()
        self.devices.clear()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None

