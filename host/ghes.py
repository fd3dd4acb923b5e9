"""A firmware-first error source (GHES-like) for a device attached over vfio-user.

The device reports poison by queueing a CPER Platform Memory Error record in its BAR0 error
queue and raising its error interrupt (docs/device.md).  This class plays the two parts a
real platform splits between firmware and the kernel's GHES driver (drivers/acpi/apei/ghes.c):

* firmware: on the interrupt, drain the queue through REGION_READ/REGION_WRITE, translate the
  record's device physical address into the host physical address the host gave the BAR
  (``host_pa = BAR address + (dpa - dpa_base)``) and hand it to the OS;
* GHES: print the record (an abridged cper_estatus_print, numbered ``{N}`` machine-wide), then ghes_handle_memory_failure:
  a recoverable memory error with a valid address becomes memory_failure() for the pfn
  holding ``physical_addr`` — one pfn per record, as the kernel does; the granularity from
  ``physical_addr_mask`` is reported (event, outcome) and marks the hardware poison, but
  GHES does not call memory_failure per page of it.

Flags and context (docs/kernel-reference.md: memory_failure callers):

* ``mode="async"`` (default: an interrupt-signalled, asynchronous report such as SCI/GSIV
  or an external abort not taken by the consumer): flags 0, memory_failure_queue() into a
  16-entry kfifo ("buffer overflow when queuing memory failure at %#lx" beyond that), and a
  kworker runs memory_failure(pfn, 0) with ``current`` the kworker (no mm).  So no task gets
  BUS_MCEERR_AR; only early-kill processes (PR_MCE_KILL_EARLY or sysctl
  vm.memory_failure_early_kill = 1) get BUS_MCEERR_AO; the result is still "Recovered".
* ``mode="sync"`` (arm64 SEA taken by the consuming thread ``current``): flags
  MF_ACTION_REQUIRED; GHES queues task work on ``current``, which calls memory_failure
  directly; a result other than 0 / -EHWPOISON / -EOPNOTSUPP logs "%#llx: Sending SIGBUS to
  comm:tid due to hardware memory corruption" (the pfn) and forces a plain SIGBUS.  Without a
  user ``current`` (kernel thread) GHES falls back to memory_failure_queue.

Kernels without the pfnmap memory_failure path (before 6.19) keep GHES's old filter: a
!pfn_valid address logs "[Firmware Warn]: GHES: Invalid address in generic error data: ..."
and nothing else happens.  A synchronous record that queues no memory_failure work at all (no
usable address) force-kills ``current`` with SIGBUS on 6.19/7.0 ("GHES GHES.0: [Hardware
Error]: GHES: comm:tid: synchronous unrecoverable error (SIGBUS)"); older kernels do nothing
and the consumer would take the same error again.

A record queued while no host was attached waits in the device's queue (the device keeps it
across client changes); the next ``process_pending()`` drains it, interrupt or not: the queue
is the truth, the interrupt only a hint.
"""
from __future__ import annotations

import errno
import os
import select
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hugepfn.abi.cper import (CPER_MEM_VALID_PA, CPER_SEV_CORRECTED, CPER_SEV_FATAL, CPER_SEV_INFORMATIONAL,
                              CPER_SEV_RECOVERABLE, ERROR_RECORD_SIZE, MemoryErrorRecord, parse_record)
from hugepfn.abi.pci import PCI_BASE_ADDRESS_0, PCI_CAP_ID_MSIX, PCI_CAPABILITY_LIST, PCI_MSIX_FLAGS_ENABLE
from hugepfn.abi.registers import (REG_ERRQ_COUNT, REG_ERRQ_HEAD, REG_ERRQ_WINDOW, REG_MEM_BAR, REG_MEM_DPA_HI,
                                   REG_MEM_DPA_LO)
from hugepfn.abi.vfio import VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX

from .memory_failure import MF_ACTION_REQUIRED, memory_failure_of
from .memory_failure.flags import ACTION_NAME, PR_PREFIX
from .memory_failure.hardware import EHWPOISON
from .mm.constants import PAGE_SHIFT, PAGE_SIZE
from .tasks import Signal, Thread
from .trace import errno_name

if TYPE_CHECKING:
    from .machine import Machine
    from .memory_failure.core import MfOutcome
    from .vfio_user.client import VfioUserClient

MEMORY_FAILURE_FIFO_SIZE = 16          # entries of the per-CPU kfifo of memory_failure_queue()
HW_ERR = "[Hardware Error]: "
MAX_GRANULARITY = 1 << 30
GHES_SOURCE_ID = 0
_U32 = struct.Struct("<I")
_DONE = (0, -EHWPOISON, -errno.EOPNOTSUPP)
_SEVERITY = {CPER_SEV_RECOVERABLE: "recoverable", CPER_SEV_FATAL: "fatal", CPER_SEV_CORRECTED: "corrected",
             CPER_SEV_INFORMATIONAL: "info"}
_MEM_ERROR_TYPES = ("unknown", "no error", "single-bit ECC", "multi-bit ECC", "single-symbol chipkill ECC",
                    "multi-symbol chipkill ECC", "master abort", "target abort", "parity error",
                    "watchdog timeout", "invalid address", "mirror Broken", "memory sparing", "scrub corrected error",
                    "scrub uncorrected error", "physical memory map-out event")


@dataclass
class ErrorOutcome:
    """What the host did about one error record."""
    record: MemoryErrorRecord
    phys: int | None = None                 # host physical address (None: not translatable)
    pfn: int | None = None                  # the pfn memory_failure was called with
    pfns: range = range(0)                  # every host pfn the record's granularity covers
    flags: int = 0
    current: str | int = "kworker"          # who called memory_failure: a tid or "kworker"
    ret: int | None = None                  # memory_failure's return (None: not called)
    result: str | None = None               # Recovered / Ignored / ...
    action: str = "ignored"                 # what the policy did
    signals: list[Signal] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    event: Any = None                       # the MemoryFailureEvent (stamped when it was published)
    mf: "MfOutcome | None" = None

    @property
    def granularity(self) -> int:
        return self.record.granularity

    def to_trace(self) -> dict:
        """Deterministic facts for a scenario trace (no timestamps, no event seq)."""
        r = self.record
        out = {"sequence": r.sequence, "bar": r.bar, "bar_offset": f"{r.bar_offset:#x}",
               "dpa": f"{r.physical_addr:#x}", "granularity": f"{r.granularity:#x}",
               "phys": None if self.phys is None else f"{self.phys:#x}",
               "pfn": None if self.pfn is None else f"{self.pfn:#x}",
               "flags": self.flags, "current": self.current,
               "ret": None if self.ret is None else errno_name(self.ret), "result": self.result,
               "action": self.action}
        if self.event is not None:
            out["event"] = self.event.to_trace()
        return out


class GhesErrorSource:
    """Error handling of device ``device_name`` of ``machine``, attached through ``client``.

    ``irq``: "err" wires the vfio ERR eventfd (the device raises it while MSI-X is off);
    "msix" enables MSI-X in config space, unmasks ``error_vector`` and wires its eventfd.
    """

    def __init__(self, machine: "Machine", device_name: str, client: "VfioUserClient", *,
                 mode: str = "async", current: Thread | int | None = None, publisher=None,
                 irq: str = "err", error_vector: int | None = None, register_bar: int = 0,
                 mark_hardware: bool = True) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if irq not in ("err", "msix", "none"):
            raise ValueError(f"irq must be 'err', 'msix' or 'none', got {irq!r}")
        if irq == "msix" and error_vector is None:
            raise ValueError("irq='msix' needs the device's error_vector")
        self.machine = machine
        self.device_name = device_name
        self.client = client
        self.mode = mode
        self.current = current
        self.publisher = publisher
        self.register_bar = register_bar
        self.mark_hardware = mark_hardware
        self.outcomes: list[ErrorOutcome] = []
        self.interrupts = 0
        self.irq = irq
        self.irq_key: tuple[int, int] | None = None
        mem_bar = self._reg32(REG_MEM_BAR)
        self.mem_bar = None if mem_bar == 0xFFFFFFFF else mem_bar
        self.mem_dpa = self._reg32(REG_MEM_DPA_LO) | self._reg32(REG_MEM_DPA_HI) << 32
        if irq == "err":
            client.wire_eventfds(VFIO_PCI_ERR_IRQ_INDEX, 1)
            self.irq_key = (VFIO_PCI_ERR_IRQ_INDEX, 0)
        elif irq == "msix":
            self._enable_msix_vector(error_vector)
            self.irq_key = (VFIO_PCI_MSIX_IRQ_INDEX, error_vector)

    # -- device access -------------------------------------------------------------------------
    def _reg32(self, offset: int) -> int:
        return _U32.unpack(self.client.region_read(self.register_bar, offset, 4))[0]

    def bar_address(self, index: int) -> int:
        """The bus address the BAR was given (what firmware programmed), from config space."""
        low = self.client.config_read(PCI_BASE_ADDRESS_0 + 4 * index, 4)
        address = low & ~0xF
        if low & 0x6 == 0x4:
            address |= self.client.config_read(PCI_BASE_ADDRESS_0 + 4 * index + 4, 4) << 32
        return address

    def _enable_msix_vector(self, vector: int) -> None:
        cap = self.client.config_read(PCI_CAPABILITY_LIST, 1) & ~3
        while cap and self.client.config_read(cap, 1) != PCI_CAP_ID_MSIX:
            cap = self.client.config_read(cap + 1, 1) & ~3
        if not cap:
            raise OSError(errno.ENODEV, "the device has no MSI-X capability")
        table = self.client.config_read(cap + 4, 4)
        bir, offset = table & 7, table & ~7
        self.client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1, start=vector)
        control = self.client.config_read(cap + 2, 2)
        self.client.config_write(cap + 2, 2, control | PCI_MSIX_FLAGS_ENABLE)
        self.client.region_write(bir, offset + 16 * vector + 12, _U32.pack(0))     # unmask the entry

    # -- the interrupt -------------------------------------------------------------------------
    def fileno(self) -> int | None:
        """The eventfd of the error interrupt (poll it), or None."""
        return None if self.irq_key is None else self.client.eventfds[self.irq_key]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the error interrupt fires (True) or ``timeout`` seconds pass (False)."""
        fd = self.fileno()
        if fd is None:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def _ack_interrupt(self) -> int:
        if self.irq_key is None:
            return 0
        try:
            count = int.from_bytes(os.read(self.client.eventfds[self.irq_key], 8), "little")
        except BlockingIOError:
            count = 0
        self.interrupts += count
        return count

    # -- draining ------------------------------------------------------------------------------
    def read_records(self) -> list[MemoryErrorRecord]:
        """Drain the BAR0 error queue: read the record at HEAD, retire it, until empty."""
        records = []
        head = self._reg32(REG_ERRQ_HEAD)
        for _ in range(self._reg32(REG_ERRQ_COUNT)):
            raw = self.client.region_read(self.register_bar, REG_ERRQ_WINDOW, ERROR_RECORD_SIZE)
            head = (head + 1) & 0xFFFFFFFF
            self.client.region_write(self.register_bar, REG_ERRQ_HEAD, _U32.pack(head))
            try:
                records.append(parse_record(raw))
            except ValueError as exc:       # not a memory error section: logged, skipped
                self.machine.klog.printk(f"{HW_ERR}{exc}")
        return records

    def process_pending(self, current: Thread | int | None = None) -> list[ErrorOutcome]:
        """Acknowledge the interrupt, drain the queue and handle every record (see the module doc)."""
        self._ack_interrupt()
        records = self.read_records()
        outcomes = [ErrorOutcome(record) for record in records]
        sync_thread = self._sync_thread(current)
        queued: list[ErrorOutcome] = []
        for out in outcomes:
            mark = len(self.machine.klog)
            if self._ghes_handle(out):
                if sync_thread is not None:
                    self._run_task_work(out, sync_thread)
                elif self._memory_failure_queue(out, len(queued)):
                    queued.append(out)
            elif sync_thread is not None:
                # ghes_do_proc: a synchronous error that queued no memory_failure work gets a
                # plain SIGBUS (in Debian's 6.1, 6.12 and 7.3 sources alike)
                self._kill_unqueued_sync(out, sync_thread)
            out.log = self.machine.klog.lines(mark)
        for out in queued:                  # the kworker drains the kfifo after the interrupt
            self._memory_failure_work(out)
        for out in outcomes:
            self._publish(out)
        self.outcomes += outcomes
        return outcomes

    # -- GHES ----------------------------------------------------------------------------------
    def _sync_thread(self, current: Thread | int | None) -> Thread | None:
        if self.mode != "sync":
            return None
        current = self.current if current is None else current
        if isinstance(current, int):
            current = self.machine.tasks.thread(current)
        if current is None or current.process.mm is None:
            return None                     # no user context: GHES queues instead
        return current

    def _translate(self, record: MemoryErrorRecord) -> int | None:
        """Host physical address of the record's error, or None (a record naming no BAR, or an
        address below the memory's dpa_base: firmware cannot say where that is)."""
        if not 0 <= record.bar <= 5:
            return None
        bar_base = self.bar_address(record.bar)
        if record.bar == self.mem_bar:
            if record.physical_addr < self.mem_dpa:
                return None
            return bar_base + (record.physical_addr - self.mem_dpa)
        return bar_base + record.bar_offset

    def _ghes_handle(self, out: ErrorOutcome) -> bool:
        """Print the record, decide whether memory_failure runs (ghes_handle_memory_failure)."""
        r = out.record
        klog = self.machine.klog
        out.phys = self._translate(r)
        sev = _SEVERITY.get(r.severity, "unknown")
        # ghes_print_estatus numbers every report it prints, machine-wide, from 1
        seqno = self.machine.extensions["ghes_seqno"] = self.machine.extensions.get("ghes_seqno", 0) + 1
        pfx = f"{{{seqno}}}{HW_ERR}"
        klog.printk(f"{pfx}Hardware error from APEI Generic Hardware Error Source: {GHES_SOURCE_ID}")
        klog.printk(f"{pfx}event severity: {sev}")
        klog.printk(f"{pfx} Error 0, type: {sev}")
        klog.printk(f"{pfx}  section_type: memory error")
        has_pa = bool(r.validation_bits & CPER_MEM_VALID_PA) and out.phys is not None
        if has_pa:
            klog.printk(f"{pfx}  physical_address: 0x{out.phys:016x}")
            klog.printk(f"{pfx}  physical_address_mask: 0x{r.physical_addr_mask:016x}")
        name = _MEM_ERROR_TYPES[r.error_type] if r.error_type < len(_MEM_ERROR_TYPES) else "unknown"
        klog.printk(f"{pfx}  error_type: {r.error_type}, {name}")
        if r.severity != CPER_SEV_RECOVERABLE or not has_pa:
            return False                    # corrected/fatal/no address: not a memory_failure report
        out.pfn = out.phys >> PAGE_SHIFT
        # the block the error covers, never more than the largest granularity (1 GiB) whatever
        # a (possibly hostile) record claims
        block = min(max(r.granularity, PAGE_SIZE), MAX_GRANULARITY)
        first = (out.phys & ~(block - 1)) >> PAGE_SHIFT
        out.pfns = range(first, first + min(max(1, -(-r.length // PAGE_SIZE)), block >> PAGE_SHIFT))
        if self.mark_hardware:
            self._mark_hardware(out.pfns)
        mf = memory_failure_of(self.machine)
        if not mf.profile.pfnmap_memory_failure:
            klog.printk(f"[Firmware Warn]: GHES: Invalid address in generic error data: {out.phys:#x}")
            return False
        return True

    def _mark_hardware(self, pfns: range) -> None:
        """The memory is bad whoever reports it: a CPU load of any page of it machine-checks."""
        hw = memory_failure_of(self.machine).hardware
        if len(pfns) == 1:
            hw.poison(pfns[0])
        else:
            hw.pfns.update(pfns)
            self.machine.hw_poison = hw

    def _memory_failure_queue(self, out: ErrorOutcome, already: int) -> bool:
        """memory_failure_queue(pfn, flags): into the per-CPU kfifo, or overflow."""
        out.flags = MF_ACTION_REQUIRED if self.mode == "sync" else 0
        if already >= MEMORY_FAILURE_FIFO_SIZE:
            self.machine.klog.printk(f"{PR_PREFIX}buffer overflow when queuing memory failure at {out.pfn:#x}")
            return False
        return True

    def _memory_failure_work(self, out: ErrorOutcome) -> None:
        """memory_failure_work_func: the kworker calls memory_failure(pfn, flags)."""
        self._call(out, None)

    def _kill_unqueued_sync(self, out: ErrorOutcome, thread: Thread) -> None:
        """ghes_do_proc: a synchronous error that queued no memory_failure work would be taken
        again at once (an exception storm), so the consumer is force-killed with SIGBUS."""
        out.current = thread.tid
        self.machine.klog.printk(f"GHES GHES.{GHES_SOURCE_ID}: {HW_ERR}GHES: {thread.comm}:{thread.tid}: "
                                 f"synchronous unrecoverable error (SIGBUS)")
        out.signals.append(self.machine.tasks.send_signal(thread, "SIGBUS", forced=True))

    def _run_task_work(self, out: ErrorOutcome, thread: Thread) -> None:
        """memory_failure_cb: task work on the thread that took the synchronous error."""
        out.flags = MF_ACTION_REQUIRED
        self._call(out, thread)
        if out.ret in _DONE:
            return
        self.machine.klog.printk(f"{out.pfn:#x}: Sending SIGBUS to {thread.comm}:{thread.tid} "
                                 f"due to hardware memory corruption")
        out.signals.append(self.machine.tasks.send_signal(thread, "SIGBUS", forced=True))

    def _call(self, out: ErrorOutcome, thread: Thread | None) -> None:
        m = self.machine
        mf = memory_failure_of(m)
        sig_mark, log_mark, n_outcomes = len(m.tasks.journal), len(m.klog), len(mf.outcomes)
        out.current = "kworker" if thread is None else thread.tid
        mf.reporting = self             # this record's event is built here (_publish), not by the core
        try:
            out.ret = mf.memory_failure(out.pfn, out.flags, thread)
        finally:
            mf.reporting = None
        out.signals = m.tasks.journal[sig_mark:]
        if len(mf.outcomes) > n_outcomes:
            out.mf = mf.outcomes[n_outcomes]
            if out.mf.result is not None:
                out.result = ACTION_NAME[out.mf.result]
            if out.mf.actions:
                out.action = out.mf.actions[0]
        if log_mark < len(m.klog) and out.log:
            out.log += m.klog.lines(log_mark)

    # -- events --------------------------------------------------------------------------------
    def _publish(self, out: ErrorOutcome) -> None:
        """Build the record's MemoryFailureEvent; publish it when there is a publisher."""
        if out.pfn is None:
            return
        from hugepfn.host.events import MemoryFailureEvent

        from .memory_failure.publish import consumption_count, keep, signal_summaries

        m = self.machine
        mf = memory_failure_of(m)
        r = out.record
        out.event = keep(mf, MemoryFailureEvent(
            pfn=out.pfn, device=m.device(self.device_name).pdev.bdf, bar=r.bar, bar_offset=r.bar_offset,
            granularity=r.granularity, policy=mf.policy.name, action=out.action, result=out.result or "Ignored",
            signals_sent=len(out.signals), signals=signal_summaries(out.signals),
            consumption_count=consumption_count(mf, out.pfn), profile=mf.profile.name), self.publisher)

    def close(self) -> None:
        """Stop listening: the eventfds stay with the client (closed with it)."""
        self.irq_key = None
