"""memory_failure() and memory_failure_pfn() for device memory without struct page (docs/kernel-reference.md: memory_failure).

One MemoryFailure object per Machine (``machine.memory_failure``) holds the pfn_address_space
registry, the latch of a real hardware failure, the trace buffer of memory_failure_event, the
poison policy the core drivers follow, and what each call did.
Nothing here keeps poison state for the upstream policy: a repeated report repeats
everything, and no counter moves (num_poisoned_pages, per-node stats).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..driver_error import DriverError
from ..gc_pause import collector_paused
from ..mm.pfn_space import PfnAddressSpace
from ..tasks import Signal, Thread
from .collect import ProcessOrder, ToKillList, collect_procs_pfn
from .flags import (ACTION_NAME, MF_ACTION_REQUIRED, MF_MSG_PFN_MAP, MF_MUST_KILL, MF_SW_SIMULATED, PR_PREFIX,
                    KernelPanic, MfResult)
from .guard import ConsumptionGuard
from .kill import kill_procs
from .registry import PfnSpaceRegistry
from .tracefs import TraceBuffer

if TYPE_CHECKING:
    from ..drivers.poison import PoisonRecord
    from ..machine import Machine
    from ..mm.zap import VmaZap
    from .policies.base import PoisonPolicy


@dataclass
class MfOutcome:
    """What one memory_failure() call did (for events, the guard, summaries and tests)."""
    pfn: int
    flags: int
    current: Thread | None
    ret: int
    result: MfResult | None = None
    spaces: list[PfnAddressSpace] = field(default_factory=list)
    tokill: ToKillList = field(default_factory=ToKillList)     # read as the list of ToKill entries
    signals: list[Signal] = field(default_factory=list)
    zapped: list["VmaZap"] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    events: list = field(default_factory=list)      # the MemoryFailureEvents it published (publish.py)


def _recovery_line(pfn: int, action: str) -> str:
    return f"{PR_PREFIX}{pfn:#x}: recovery action for {MF_MSG_PFN_MAP}: {action}"


class MemoryFailure:
    def __init__(self, machine: "Machine", config_memory_failure: bool = True,
                 policy: "PoisonPolicy | None" = None) -> None:
        from .hardware import HardwarePoison
        from .policies import make_policy

        self.machine = machine
        self.profile = machine.profile
        self.config_memory_failure = config_memory_failure
        self.registry = PfnSpaceRegistry(enabled=config_memory_failure,
                                         needs_callback=self.profile.pfn_to_vma_pgoff_callback)
        self.trace = TraceBuffer(self.profile.memory_failure_trace_system)
        self.order = ProcessOrder(machine.tasks)
        self.policy = policy if policy is not None else make_policy(machine.policy)
        self.guard = ConsumptionGuard()
        self.publisher = None                   # optional hugepfn.host.events Publisher
        self.events: list = []                  # every MemoryFailureEvent built, published or not
        self.reporting = None                   # the error source whose record is being handled
        self.hw_memory_failure = False          # latched by a non-simulated failure
        self.num_poisoned_pages = 0             # /proc/meminfo HardwareCorrupted (pages); never moves here
        self.node_stats = {"total": 0, "ignored": 0, "failed": 0, "delayed": 0, "recovered": 0}
        self.panicked: KernelPanic | None = None
        self.outcomes: list[MfOutcome] = []
        self.repaired_at: dict[int, int] = {}  # pfn -> len(outcomes) when the device reported it repaired
        self.listeners: list[Callable[[MfOutcome], None]] = []
        self.drivers: dict[int, "PoisonRecord"] = {}    # id(device) -> the poison record that driver keeps
        self.hardware = HardwarePoison(self)

    # -- registration (docs/kernel-reference.md: registration) -----------------------------------------------------------------
    def register_pfn_address_space(self, space: PfnAddressSpace) -> int:
        if not self.profile.pfnmap_memory_failure:
            return -errno.EOPNOTSUPP        # the API does not exist before v6.19
        return self.registry.register(space)

    def unregister_pfn_address_space(self, space: PfnAddressSpace) -> None:
        if self.profile.pfnmap_memory_failure:
            self.registry.unregister(space)

    # -- entry (docs/kernel-reference.md: memory_failure) ------------------------------------------------------------------------
    def memory_failure(self, pfn: int, flags: int = 0, current: Thread | None = None) -> int:
        """memory_failure(pfn, flags) with ``current`` the calling thread (None: a kworker)."""
        with collector_paused():          # see gc_pause: the collections cost more than the call
            return self._memory_failure(pfn, flags, current)

    def _memory_failure(self, pfn: int, flags: int, current: Thread | None) -> int:
        m = self.machine
        if current is None:
            current = m.tasks.kworker
        if not self.config_memory_failure:
            return 0                        # CONFIG_MEMORY_FAILURE=n: the static inline stub
        if not m.sysctl.get("vm.memory_failure_recovery", 1):
            self.panicked = KernelPanic(f"Memory failure on page {pfn:x}")
            m.klog.printk(self.panicked.log_line)
            raise self.panicked
        if not flags & MF_SW_SIMULATED:
            self.hw_memory_failure = True
        # pfn_to_online_page() is NULL for device memory; arch_memory_failure() -> -ENXIO
        # (no SGX EPC in the model); !pfn_valid() -> the pfnmap path where the kernel has it.
        if self.profile.pfnmap_memory_failure:
            return self.memory_failure_pfn(pfn, flags, current)
        m.klog.printk(f"{PR_PREFIX}{pfn:#x}: memory outside kernel control")
        self._finish(MfOutcome(pfn, flags, current, -errno.ENXIO))
        return -errno.ENXIO

    # -- the pfnmap path (docs/kernel-reference.md: memory_failure) ---------------------------------------------------------------
    def memory_failure_pfn(self, pfn: int, flags: int, current: Thread | None) -> int:
        m = self.machine
        out = MfOutcome(pfn, flags, current, 0)
        zap_mark = len(m.zap_journal)
        spaces = self.registry.lookup(pfn)          # under pfn_space_lock
        if not spaces:
            out.ret = self.action_result(pfn, MfResult.MF_IGNORED)
            out.result = MfResult.MF_IGNORED
            self._finish(out)
            return out.ret
        early_kill = m.sysctl.get("vm.memory_failure_early_kill", 0)
        for space in spaces:
            collect_procs_pfn(space, pfn, current, early_kill, self.order, m.klog, out.tokill)
            out.actions.append(self._notify(space, pfn))
        out.spaces = spaces
        out.zapped = m.zap_journal[zap_mark:]
        flags |= MF_ACTION_REQUIRED | MF_MUST_KILL
        out.signals = kill_procs(m.tasks, m.klog, out.tokill, pfn, flags, current)
        out.ret = self.action_result(pfn, MfResult.MF_RECOVERED)
        out.result = MfResult.MF_RECOVERED
        self._finish(out)
        return out.ret

    @staticmethod
    def _notify(space: PfnAddressSpace, pfn: int) -> str:
        """The space's failure notification (the driver decides what to do); its action token."""
        failure = space.failure
        if failure is None:
            return "signalled"              # v7.0: memory_failure_pfn only signals
        action = failure(space, pfn)
        if action is None:
            return "signalled"
        if not isinstance(action, str):
            owner = space.owner
            name = getattr(owner, "registered_as", None) or type(owner).__name__
            raise DriverError(f"driver {name}: pfn_memory_failure for pfn {pfn:#x} returned {action!r}, "
                              "not an action token (a string such as \"zapped\") or None")
        return action

    def action_result(self, pfn: int, result: MfResult) -> int:
        """Trace event + log line; MF_MSG_PFN_MAP changes no counter.  0 for Recovered/Delayed."""
        name = ACTION_NAME[result]
        self.trace.memory_failure_event(pfn, MF_MSG_PFN_MAP, name)
        self.machine.klog.lazy(_recovery_line, pfn, name)
        return 0 if result in (MfResult.MF_RECOVERED, MfResult.MF_DELAYED) else -errno.EBUSY

    def _finish(self, out: MfOutcome) -> None:
        self.outcomes.append(out)
        for listener in list(self.listeners):
            listener(out)
        if out.spaces and self.reporting is None:       # an error source builds its record's event
            from .publish import publish_outcome
            publish_outcome(self, out)

    # -- consumption (the loop guard) ---------------------------------------------------------------
    def guard_consumed(self, proc, tid: int, pfn: int, how: str) -> None:
        loop = self.guard.consumed(proc.pid, tid, proc.comm, pfn, how)
        if loop is not None:
            from .publish import publish_loop
            publish_loop(self, loop)

    def consumed_by_fault(self, proc, pfn: int) -> None:
        """A fault on a recorded pfn returned VM_FAULT_HWPOISON (the fault context has no thread:
        the process's main thread stands for it)."""
        self.guard_consumed(proc, proc.main_thread.tid, pfn, "fault")

    # -- driver-side poison records ------------------------------------------------------------------
    def driver_state(self, device) -> "PoisonRecord":
        """The poison record ``device`` keeps (created on its first record, and known here so that
        summaries, repair and collapse see it)."""
        record = device.poison_record
        if record is None:
            from ..drivers.poison import PoisonRecord

            record = device.poison_record = PoisonRecord(device)
            self.drivers[id(device)] = record
        return record
