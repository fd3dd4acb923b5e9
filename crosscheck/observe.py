"""The kernel's view of one scenario, from the probe's output, in the project's trace form.

Input: the lines the guest probe printed for one scenario (hugepfn/crosscheck/guest/probe.c
documents them), including the tracefs kprobe events and the kernel log records of every
step.  Output: a trace dict shaped like the model's (``hugepfn run --json``), holding only
what the kernel showed:

* ``ret``: a syscall's result (0 / "-EINVAL"); for an access, the result of the last
  handle_mm_fault of that access ("0" if it took no fault; "VM_FAULT_SIGSEGV" when the
  thread got SIGSEGV without a fault, the model's name for bad_area).
* ``calls``: every call of the driver's fault handlers during the access, outermost only
  (vfio_pci_mmap_page_fault calls the huge-fault handler with order 0: one call), with the
  order and the value it returned, in order; a fault retried after VM_FAULT_RETRY shows
  its calls twice, as the driver saw them.
* ``mapped``: the leaf over the address after the access.  The probe cannot read page
  tables (the generic page walkers skip VM_PFNMAP VMAs), so it is inferred from the insert
  helpers the kernel called: the most recent leaf installed over the address in that
  process (vmf_insert_pfn{,_pmd,_pud} returning NOPAGE, or a remap_pfn_range over it).  A
  leaf that was later zapped cannot be hit without a new fault, which the kprobes see; an
  access whose fault failed maps nothing.  fork copies the parent's leaves, mremap moves
  them: both are followed.
* ``signals``: what the threads' handlers received (tid, signo, si_code, si_addr,
  si_addr_lsb), and SIGKILL for a process that was killed.
* ``log``: the kernel log records printed during the step, as printed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from hugepfn.host.mm.vm_fault import VM_FAULT_ERROR, VM_FAULT_NOPAGE, fault_name
from hugepfn.host.tasks import BUS_CODE_NAMES, SEGV_CODE_NAMES
from hugepfn.host.trace import errno_name

PAGE = 4096
PMD_SIZE = 1 << 21
PUD_SIZE = 1 << 30
EVENT = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>[\d.]+): (?P<name>\w+): "
                   r"\((?P<where>.*?)\)(?P<args>.*)$")
ARG = re.compile(r"(\w+)=(\S+)")
SIGNAL_NAMES = {7: "SIGBUS", 9: "SIGKILL", 11: "SIGSEGV"}
HANDLERS = {"hf": None, "pf": 0, "f": 0, "nvhf": None, "nvf": 0}     # event -> fixed order (None: from args)
INSERTS = {"ipud": ("pud", PUD_SIZE), "ipudp": ("pud", PUD_SIZE), "ipmd": ("pmd", PMD_SIZE),
           "ipmdp": ("pmd", PMD_SIZE), "ipte": ("pte", PAGE)}
PFN_FLAGS_MASK = (1 << 52) - 1          # pfn_t (6.12) keeps its flags in the top bits
# Lines an emulated (TCG) guest prints because of its own slowness, not because of a step:
# the model never predicts them, so they are not part of any step's log.
GUEST_NOISE = re.compile(r"^(hrtimer: interrupt took \d+ ns|clocksource: |sched: RT throttling activated"
                         r"|rcu: INFO: |workqueue: .* hogged CPU)")


@dataclass
class Event:
    name: str
    tid: int
    args: dict[str, int]


def parse_event(line: str) -> Event | None:
    m = EVENT.match(line)
    if not m:
        return None
    args = {}
    for key, value in ARG.findall(m["args"]):
        try:
            args[key] = int(value, 0)
        except ValueError:
            continue
    return Event(m["name"], int(m["tid"]), args)


@dataclass
class RawStep:
    index: int
    result: list[str] = field(default_factory=list)        # the R line's words after the index
    signals: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    deaths: list[tuple[int, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    log: list[tuple[int, str]] = field(default_factory=list)


def split_steps(lines: list[str]) -> dict[int, RawStep]:
    """The probe's lines per step: from the step's B line to its E line (its signals and
    events are printed before its R line); lines outside any step are setup."""
    steps: dict[int, RawStep] = {}
    pending = RawStep(-1)
    inside = False
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "B":
            pending = RawStep(int(rest))
            inside = True
            continue
        if not inside:
            continue
        if kind == "R":
            index, _, words = rest.partition(" ")
            pending.index = int(index)
            pending.result = words.split()
        elif kind == "E":
            steps[int(rest)] = pending
            pending = RawStep(-1)
            inside = False
            continue
        elif kind == "G":
            tid, signo, code, addr, lsb = rest.split()
            pending.signals.append((int(tid), int(signo), int(code), int(addr, 16), int(lsb)))
        elif kind == "D":
            pid, status = rest.split()
            pending.deaths.append((int(pid), status))
        elif kind == "K":
            event = parse_event(rest)
            if event is not None:
                pending.events.append(event)
        elif kind == "L":
            prio, _, text = rest.partition(" ")
            pending.log.append((int(prio), text))
    if inside:
        # a step that began and never ended: the guest died in it (a crash or a hang)
        pending.result = ["unfinished"]
        steps[pending.index] = pending
    return steps


@dataclass
class Leaf:
    level: str
    va: int
    size: int
    pfn: int

    def covers(self, addr: int) -> bool:
        return self.va <= addr < self.va + self.size

    def at(self, addr: int) -> dict:
        """The leaf mapping ``addr``: itself, or the one PTE of a remap_pfn_range run."""
        if self.level == "pte" and self.size > PAGE:
            va = addr & ~(PAGE - 1)
            return {"level": "pte", "va": f"{va:#x}", "pfn": f"{self.pfn + ((va - self.va) >> 12):#x}"}
        return {"level": self.level, "va": f"{self.va:#x}", "pfn": f"{self.pfn:#x}"}


class Leaves:
    """Per process: the leaves the kernel installed, newest last."""

    def __init__(self) -> None:
        self.by_pid: dict[int, list[Leaf]] = {}

    def add(self, pid: int, leaf: Leaf) -> None:
        self.by_pid.setdefault(pid, []).append(leaf)

    def lookup(self, pid: int, addr: int) -> Leaf | None:
        for leaf in reversed(self.by_pid.get(pid, [])):
            if leaf.covers(addr):
                return leaf
        return None

    def fork(self, parent: int, child: int) -> None:
        self.by_pid[child] = [Leaf(x.level, x.va, x.size, x.pfn) for x in self.by_pid.get(parent, [])]

    def move(self, pid: int, old: int, length: int, new: int) -> None:
        moved = []
        for leaf in self.by_pid.get(pid, []):
            if old <= leaf.va < old + length:
                moved.append(Leaf(leaf.level, leaf.va - old + new, leaf.size, leaf.pfn))
        self.by_pid.setdefault(pid, []).extend(moved)


def _calls(events: list[Event], tid: int) -> list[dict]:
    """The driver calls of one thread, outermost only, each with its return value."""
    calls: list[dict] = []
    stack: list[tuple[str, dict]] = []
    for ev in events:
        if ev.tid != tid:
            continue
        base = ev.name[:-4] if ev.name.endswith("_ret") else ev.name
        if base not in HANDLERS:
            continue
        if not ev.name.endswith("_ret"):
            order = HANDLERS[base] if HANDLERS[base] is not None else ev.args.get("order", 0)
            call = {"order": order, "ret": None}
            if not stack:
                calls.append(call)
            stack.append((base, call))
        elif stack:
            name, call = stack.pop()
            if call["ret"] is None:
                call["ret"] = fault_name(ev.args.get("ret", 0))
    return calls


def _installs(events: list[Event], tid: int) -> list[Leaf]:
    out = []
    open_calls: list[tuple[str, dict]] = []
    for ev in events:
        if ev.tid != tid:
            continue
        if ev.name in INSERTS or ev.name == "remap":
            open_calls.append((ev.name, ev.args))
        elif ev.name.endswith("_ret") and ev.name[:-4] in INSERTS or ev.name == "remap_ret":
            if not open_calls:
                continue
            name, args = open_calls.pop()
            ok = ev.args.get("ret", 0) == VM_FAULT_NOPAGE if name != "remap" else ev.args.get("ret", 1) == 0
            if not ok:
                continue
            if name == "remap":
                out.append(Leaf("pte", args["addr"], args["size"], args["pfn"] & PFN_FLAGS_MASK))
            else:
                level, size = INSERTS[name]
                out.append(Leaf(level, args["addr"] & ~(size - 1), size, args["pfn"] & PFN_FLAGS_MASK))
    return out


def _fault_rets(events: list[Event], tid: int, lo: int, hi: int) -> list[int]:
    """Return values of handle_mm_fault calls of ``tid`` at addresses in [lo, hi)."""
    rets = []
    inside = False
    for e in events:
        if e.tid != tid or e.name not in ("hmf", "hmf_ret"):
            continue
        if e.name == "hmf":
            inside = lo <= e.args.get("address", -1) < hi
        elif inside:
            rets.append(e.args.get("ret", 0))
            inside = False
    return rets


def _signal(sig: tuple[int, int, int, int, int]) -> dict:
    tid, signo, code, addr, lsb = sig
    name = SIGNAL_NAMES.get(signo, f"SIG{signo}")
    codes = BUS_CODE_NAMES if name == "SIGBUS" else SEGV_CODE_NAMES
    out: dict = {"tid": tid, "signo": name, "code": codes.get(code, str(code)), "addr": f"{addr:#x}"}
    if name == "SIGBUS" and codes.get(code, "").startswith("BUS_MCEERR"):
        out["addr_lsb"] = lsb
    return out


def _is_query(option) -> bool:
    """PR_*_GET options return a value, not a status."""
    from hugepfn.host.scenario.steps import PR_GET_THP_DISABLE, PR_MCE_KILL_GET
    return option in ("PR_MCE_KILL_GET", "PR_GET_THP_DISABLE", PR_MCE_KILL_GET, PR_GET_THP_DISABLE)


def _ret(words: list[str]) -> int | str:
    if not words:
        return "?"
    head = words[0]
    if head in ("killed", "timeout", "unfinished"):
        return head
    try:
        value = int(head)
    except ValueError:
        return head
    return errno_name(value) if value <= 0 else value


def kernel_trace(lines: list[str], scenario, thread_pid: dict[int, int]) -> dict:
    """The trace of one scenario as the kernel showed it (see the module docstring).
    ``scenario`` is the parsed Scenario the guest replayed (for the step kinds and fields);
    ``thread_pid`` maps every tid to its process."""
    raw = split_steps(lines)
    leaves = Leaves()
    steps = []
    setup = raw.get(0)
    for step in scenario.steps:
        r = raw.get(step.index)
        rec: dict = {"index": step.index, "do": step.kind}
        if r is None:
            rec["ret"] = "not run"
            steps.append(rec)
            continue
        f = step.fields
        tid = f.get("tid") or f.get("current") or f.get("pid")
        tid = tid if isinstance(tid, int) else 0
        pid = thread_pid.get(tid, tid)
        extras = dict(w.split("=", 1) for w in r.result[1:] if "=" in w)
        for ev_tid in {e.tid for e in r.events}:
            for leaf in _installs(r.events, ev_tid):
                leaves.add(thread_pid.get(ev_tid, ev_tid), leaf)
        signals = [_signal(s) for s in r.signals]
        signals += [{"tid": p, "signo": "SIGKILL"} for p, status in r.deaths if status == "sig=9"]
        if step.kind == "access":
            addr = f["addr"]
            page = addr & ~(PAGE - 1)
            rets = _fault_rets(r.events, tid, page, page + PAGE)
            if rets:
                final = rets[-1]
                ret = fault_name(final)
            elif any(s["signo"] == "SIGSEGV" for s in signals):
                final, ret = 0x40, "VM_FAULT_SIGSEGV"
            else:
                final, ret = 0, "0"
            rec["ret"] = ret
            rec["calls"] = _calls(r.events, tid)
            leaf = None if final & VM_FAULT_ERROR else leaves.lookup(pid, addr)
            rec["mapped"] = leaf.at(addr) if leaf is not None else None
        else:
            rec["ret"] = _ret(r.result)
            if step.kind == "exit" and rec["ret"] == "killed" and any(st.startswith("exit=") for _, st in r.deaths):
                rec["ret"] = 0          # the process is gone because it exited: the step did what it said
            if step.kind == "touch":
                lo, hi = f["addr"], f["addr"] + f["length"]
                faulted = {e.args["address"] & ~(PAGE - 1) for e in r.events
                           if e.tid == tid and e.name == "hmf" and lo <= e.args.get("address", -1) < hi}
                rec["accesses"] = int(extras.get("accesses", 0))
                rec["faults"] = len(faulted)
                rec["stopped_at"] = extras.get("stopped_at")
            if step.kind == "prctl" and _is_query(f["option"]) and isinstance(rec["ret"], int):
                rec["value"], rec["ret"] = rec["ret"], 0
            if step.kind == "fork" and rec["ret"] == 0:
                leaves.fork(pid, f["child"])
            if step.kind == "mremap" and rec["ret"] == 0:
                leaves.move(pid, f["addr"], f["length"], int(extras.get("addr", "0"), 16))
        rec["signals"] = signals
        rec["log"] = [text for _prio, text in r.log if not GUEST_NOISE.match(text)]
        steps.append(rec)
    out = {"hugepfn_trace": 1, "source": "kernel", "steps": steps}
    if setup is not None and setup.result and setup.result[0] != "0":
        out["setup_error"] = " ".join(setup.result)
    return out
