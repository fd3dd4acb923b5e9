"""The step kinds of scenario files: a table kind -> (field schema, handler).

A handler is ``handler(run, step) -> int | str``: it performs the step on ``run.machine``
and returns 0 / a negative errno (shown as "-EINVAL") or, for an access, the fault result
already spelled.  It may fill ``run.record`` (calls, mapped, extra facts).  Signals, log
lines and zaps are collected by the runner around the call.

Other packages add or complete kinds with register_step_kind / set_step_handler: the
poison kinds are declared here (so files are validated) but have no handler until the
memory-failure model registers one.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..mm.constants import MADV_HUGEPAGE, MADV_NOHUGEPAGE
from ..mm.vm_fault import fault_name
from ..tasks import PF_MCE_EARLY, PF_MCE_PROCESS
from .fields import Field

if TYPE_CHECKING:
    from .runner import ScenarioRun, Step

Handler = Callable[["ScenarioRun", "Step"], "int | str"]


@dataclass
class StepKind:
    name: str
    fields: tuple[Field, ...]
    handler: Handler | None = None
    # the field naming the thread that runs in user space for this step (its pending signals
    # are handled first, as on a return to user space)
    thread_field: str | None = None
    doc: str = ""
    extra_fields: tuple[str, ...] = field(default=("note",))


STEP_KINDS: dict[str, StepKind] = {}


def register_step_kind(name: str, fields: tuple[Field, ...] | list[Field], handler: Handler | None = None,
                       thread_field: str | None = None, doc: str = "") -> StepKind:
    """Declare (or redeclare) a step kind with its field schema and optional handler."""
    kind = StepKind(name, tuple(fields), handler, thread_field, doc)
    STEP_KINDS[name] = kind
    return kind


def set_step_handler(name: str, handler: Handler) -> None:
    """Attach the handler of an already declared kind (e.g. "poison" from the memory-failure model)."""
    if name not in STEP_KINDS:
        raise KeyError(f"unknown step kind {name!r}")
    STEP_KINDS[name].handler = handler


# -- sysctl / prctl vocabulary ---------------------------------------------------------------------
SYSCTLS: dict[str, tuple[int, int]] = {          # name -> (min, max) of proc_dointvec_minmax
    "vm.memory_failure_early_kill": (0, 1),
    "vm.memory_failure_recovery": (0, 1),
}

PR_MCE_KILL = 33
PR_MCE_KILL_GET = 34
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_MCE_KILL_CLEAR = 0
PR_MCE_KILL_SET = 1
PR_MCE_KILL_LATE = 0
PR_MCE_KILL_EARLY = 1
PR_MCE_KILL_DEFAULT = 2
PRCTL_OPTIONS = {"PR_MCE_KILL": PR_MCE_KILL, "PR_MCE_KILL_GET": PR_MCE_KILL_GET,
                 "PR_SET_THP_DISABLE": PR_SET_THP_DISABLE, "PR_GET_THP_DISABLE": PR_GET_THP_DISABLE}
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1
PRCTL_ARG_NAMES = {"PR_MCE_KILL_CLEAR": 0, "PR_MCE_KILL_SET": 1, "PR_MCE_KILL_LATE": 0,
                   "PR_MCE_KILL_EARLY": 1, "PR_MCE_KILL_DEFAULT": 2,
                   "PR_THP_DISABLE_EXCEPT_ADVISED": PR_THP_DISABLE_EXCEPT_ADVISED}
MF_FLAGS = {"MF_COUNT_INCREASED": 1 << 0, "MF_ACTION_REQUIRED": 1 << 1, "MF_MUST_KILL": 1 << 2,
            "MF_SOFT_OFFLINE": 1 << 3, "MF_UNPOISON": 1 << 4, "MF_SW_SIMULATED": 1 << 5,
            "MF_NO_RETRY": 1 << 6, "MF_MEM_PRE_REMOVE": 1 << 7}
MADVICE = {"MADV_NORMAL": 0, "MADV_DONTNEED": 4, "MADV_HUGEPAGE": MADV_HUGEPAGE,
           "MADV_NOHUGEPAGE": MADV_NOHUGEPAGE}
PROTS = {"none": 0, "r": 1, "rw": 3}
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2


def _prctl_value(names: dict[str, int]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return f"expected an integer or one of {', '.join(names)}, got {value!r}"
        if isinstance(value, str) and value not in names:
            return f"expected an integer or one of {', '.join(names)}, got {value!r}"
        return None
    return check


def resolve(value: int | str, names: dict[str, int]) -> int:
    return names[value] if isinstance(value, str) else value


def _check_flags(value: list[str]) -> str | None:
    bad = [f for f in value if f not in MF_FLAGS]
    return f"unknown flag(s) {', '.join(bad)} (known: {', '.join(MF_FLAGS)})" if bad else None


def _check_current(value: Any) -> str | None:
    if value == "kworker" or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return f'expected a tid or "kworker", got {value!r}'


def _check_sysctl(value: str) -> str | None:
    return None if value in SYSCTLS else f"unknown sysctl {value!r} (known: {', '.join(SYSCTLS)})"


def _size_1_2_4(value: int) -> str | None:
    return None if value in (1, 2, 4) else f"must be 1, 2 or 4, got {value}"


def _region(value: int) -> str | None:
    return None if 0 <= value < 16 else f"must be a region index 0..15, got {value}"


# -- handlers ----------------------------------------------------------------------------------------
def do_mmap(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return run.machine.mmap(f["pid"], f["device"], f["region"], f["offset"], f["length"], f["addr"], f["shared"],
                            PROTS[f["prot"]])


def do_munmap(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return run.machine.munmap(f["pid"], f["addr"], f["length"])


def do_madvise(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return run.machine.madvise(f["pid"], f["addr"], f["length"], MADVICE[f["advice"]])


def do_access(run: "ScenarioRun", step: "Step") -> str:
    f = step.fields
    res = run.machine.access(f["tid"], f["addr"], f["write"])
    run.record.calls = res.calls
    leaf = res.leaf
    run.record.mapped = None if leaf is None else {"level": leaf.level, "va": f"{leaf.va:#x}", "pfn": f"{leaf.pfn:#x}"}
    if res.consumed:
        run.record.extra["consumed_poison"] = True
    return fault_name(res.ret)


def do_touch(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    res = run.machine.touch_range(f["tid"], f["addr"], f["addr"] + f["length"], f["stride"], f["write"])
    run.record.extra.update({"accesses": res.accesses, "faults": res.faults,
                             "stopped_at": None if res.stopped_at is None else f"{res.stopped_at:#x}"})
    return 0


def _stride(value: int) -> str | None:
    return None if value > 0 and value % 4096 == 0 else f"must be a positive multiple of 4K, got {value:#x}"


def do_config_write(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return run.machine.device(f["device"]).config_write(f["offset"], f["size"], f["value"])


def do_reset(run: "ScenarioRun", step: "Step") -> int:
    return run.machine.device(step.fields["device"]).ioctl_reset()


def do_zap(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    run.machine.device(f["device"]).zap(f["offset"], f["length"])
    return 0


def do_low_power_entry(run: "ScenarioRun", step: "Step") -> int:
    return run.machine.device(step.fields["device"]).low_power_entry()


def do_low_power_exit(run: "ScenarioRun", step: "Step") -> int:
    return run.machine.device(step.fields["device"]).low_power_exit()


def do_sysctl(run: "ScenarioRun", step: "Step") -> int:
    name, value = step.fields["name"], step.fields["value"]
    lo, hi = SYSCTLS[name]
    if not lo <= value <= hi:
        return -errno.EINVAL
    run.machine.sysctl[name] = value
    return 0


def prctl(thread, option: int, arg2: int, arg3: int, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) for the options the model knows (kernel/sys.c); returns the syscall result."""
    if option == PR_MCE_KILL:
        if arg4 | arg5:
            return -errno.EINVAL
        if arg2 == PR_MCE_KILL_CLEAR:
            if arg3 != 0:
                return -errno.EINVAL
            thread.flags &= ~PF_MCE_PROCESS
        elif arg2 == PR_MCE_KILL_SET:
            thread.flags |= PF_MCE_PROCESS          # set before arg3 is checked, as the kernel does
            if arg3 == PR_MCE_KILL_EARLY:
                thread.flags |= PF_MCE_EARLY
            elif arg3 == PR_MCE_KILL_LATE:
                thread.flags &= ~PF_MCE_EARLY
            elif arg3 == PR_MCE_KILL_DEFAULT:
                thread.flags &= ~(PF_MCE_EARLY | PF_MCE_PROCESS)
            else:
                return -errno.EINVAL
        else:
            return -errno.EINVAL
        return 0
    if option == PR_MCE_KILL_GET:
        if arg2 | arg3 | arg4 | arg5:
            return -errno.EINVAL
        if thread.flags & PF_MCE_PROCESS:
            return PR_MCE_KILL_EARLY if thread.flags & PF_MCE_EARLY else PR_MCE_KILL_LATE
        return PR_MCE_KILL_DEFAULT
    if option == PR_SET_THP_DISABLE:
        advised_ok = thread.process.mm.machine.profile.thp_disable_except_advised
        allowed = PR_THP_DISABLE_EXCEPT_ADVISED if advised_ok else 0
        if arg3 & ~allowed or arg4 | arg5 or (arg3 and not arg2):
            return -errno.EINVAL
        thread.mm.thp_disabled = bool(arg2)
        thread.mm.thp_except_advised = bool(arg2 and arg3 & PR_THP_DISABLE_EXCEPT_ADVISED)
        return 0
    if option == PR_GET_THP_DISABLE:
        if arg2 | arg3 | arg4 | arg5:
            return -errno.EINVAL
        mm = thread.mm
        return (int(mm.thp_disabled) | (PR_THP_DISABLE_EXCEPT_ADVISED if mm.thp_except_advised else 0)
                if mm.thp_disabled else 0)
    return -errno.EINVAL


def do_prctl(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    thread = run.machine.tasks.thread(f["tid"])
    ret = prctl(thread, resolve(f["option"], PRCTL_OPTIONS), resolve(f["arg2"], PRCTL_ARG_NAMES),
                resolve(f["arg3"], PRCTL_ARG_NAMES), f["arg4"], f["arg5"])
    if ret > 0 or (ret == 0 and f["option"] in ("PR_MCE_KILL_GET", "PR_GET_THP_DISABLE", PR_MCE_KILL_GET,
                                                 PR_GET_THP_DISABLE)):
        run.record.extra["value"] = ret     # a query's result; the syscall itself succeeded
        return 0
    return ret


# -- the table -----------------------------------------------------------------------------------------
def _device() -> Field:
    return Field("device", "str")


def _prctl_arg(name: str) -> Field:
    return Field(name, "any", required=False, default=0, check=_prctl_value(PRCTL_ARG_NAMES))


register_step_kind("mmap", (Field("pid", "int"), _device(), Field("region", "int", check=_region),
                            Field("offset", required=False, default=0), Field("length"), Field("addr"),
                            Field("shared", "bool", required=False, default=True),
                            Field("prot", "str", required=False, default="rw", choices=tuple(PROTS))), do_mmap,
                   doc="mmap of a vfio device region at a fixed VA")
register_step_kind("munmap", (Field("pid", "int"), Field("addr"), Field("length")), do_munmap)
register_step_kind("madvise", (Field("pid", "int"), Field("addr"), Field("length"),
                               Field("advice", "str", choices=tuple(MADVICE))), do_madvise)
register_step_kind("access", (Field("tid", "int"), Field("addr"), Field("write", "bool", required=False,
                                                                          default=False)),
                   do_access, thread_field="tid", doc="one CPU load/store; faults if unmapped")
register_step_kind("touch", (Field("tid", "int"), Field("addr"), Field("length"),
                             Field("stride", required=False, default=4096, check=_stride),
                             Field("write", "bool", required=False, default=False)),
                   do_touch, thread_field="tid",
                   doc="extension: a loop of accesses addr, addr+stride, ... < addr+length; stops at a signal")
register_step_kind("config_write", (_device(), Field("offset", hex_in_trace=True),
                                    Field("size", "int", check=_size_1_2_4), Field("value")), do_config_write)
register_step_kind("reset", (_device(),), do_reset, doc="VFIO_DEVICE_RESET")
register_step_kind("zap", (_device(), Field("offset"), Field("length")), do_zap,
                   doc="unmap_mapping_range on the device file")
register_step_kind("low_power_entry", (_device(),), do_low_power_entry,
                   doc="VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY (extension)")
register_step_kind("low_power_exit", (_device(),), do_low_power_exit,
                   doc="VFIO_DEVICE_FEATURE_LOW_POWER_EXIT (extension)")
register_step_kind("sysctl", (Field("name", "str", check=_check_sysctl), Field("value", "int")), do_sysctl)
register_step_kind("prctl", (Field("tid", "int"),
                             Field("option", "any", check=_prctl_value(PRCTL_OPTIONS)),
                             _prctl_arg("arg2"), _prctl_arg("arg3"),
                             Field("arg4", "int", required=False, default=0),
                             Field("arg5", "int", required=False, default=0)),
                   do_prctl, thread_field="tid")
def do_mprotect(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    return run.machine.mprotect(f["pid"], f["addr"], f["length"], PROTS[f["prot"]])


def do_mremap(run: "ScenarioRun", step: "Step") -> int:
    f = step.fields
    got = run.machine.mremap(f["pid"], f["addr"], f["length"], f["new_length"], f["flags"], f["new_addr"])
    if got < 0:
        return got
    run.record.extra["new_addr"] = f"{got:#x}"
    return 0


def do_fork(run: "ScenarioRun", step: "Step") -> int:
    return run.machine.fork(step.fields["pid"], step.fields["child"])


def do_exit(run: "ScenarioRun", step: "Step") -> int:
    return run.machine.exit(step.fields["pid"])


def do_sleep(run: "ScenarioRun", step: "Step") -> int:
    run.machine.clock.msleep(step.fields["ms"])
    return 0


def do_thp(run: "ScenarioRun", step: "Step") -> int:
    run.machine.thp = step.fields["mode"]
    return 0


register_step_kind("mprotect", (Field("pid", "int"), Field("addr"), Field("length"),
                                Field("prot", "str", choices=tuple(PROTS))), do_mprotect,
                   doc="mprotect(2) of a range (VMAs split at its ends)")
register_step_kind("mremap", (Field("pid", "int"), Field("addr"), Field("length"), Field("new_length"),
                              Field("new_addr", required=False, default=0),
                              Field("flags", "int", required=False, default=MREMAP_MAYMOVE | MREMAP_FIXED)),
                   do_mremap, doc="mremap(2); flags MREMAP_MAYMOVE=1 | MREMAP_FIXED=2 (default 3)")
register_step_kind("fork", (Field("pid", "int"), Field("child", "int", check=lambda v: None if v > 0 else "must be positive")),
                   do_fork, doc="fork(2) by the process's main thread; the child (one thread, tid = child) "
                             "inherits the mappings")
register_step_kind("exit", (Field("pid", "int"), Field("code", "int", required=False, default=0)), do_exit,
                   doc="the process exits (its mappings go)")
register_step_kind("sleep", (Field("ms", "int", check=lambda v: None if 0 <= v <= 60000 else "must be 0..60000"),),
                   do_sleep, doc="time passes (rate limits of the kernel log reopen after 5 s)")
register_step_kind("thp", (Field("mode", "str", choices=("always", "madvise", "never")),), do_thp,
                   doc="write /sys/kernel/mm/transparent_hugepage/enabled")

# poison kinds: validated now, run by the memory-failure model once it registers handlers
register_step_kind("poison", (_device(), Field("region", "int", check=_region), Field("offset")),
                   doc="the hardware marks memory bad (no report yet)")
register_step_kind("memory_failure", (Field("pfn"), Field("flags", "strlist", required=False, default=[],
                                                          check=_check_flags),
                                      Field("current", "any", required=False, default="kworker",
                                            check=_check_current)),
                   thread_field="current", doc="memory_failure() as called by an error handler")
register_step_kind("hard_offline_page", (Field("phys"), Field("current", "int")), thread_field="current",
                   doc="write to /sys/devices/system/memory/hard_offline_page")
register_step_kind("register", (_device(), Field("region", "int", check=_region)),
                   doc="register_pfn_address_space for a region's pfns")
register_step_kind("unregister", (_device(), Field("region", "int", check=_region)),
                   doc="unregister_pfn_address_space for a region's pfns")
