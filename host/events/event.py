"""The memory-failure event: the Python-facing value published after memory_failure() runs.

One event says what the host did about one poisoned pfn behind a device BAR: which
policy ran, what it did, the kernel's action_result() verdict, and which SIGBUS it
sent.  It is the "alternative protocol to signal userspace about the failed memory
besides fault and SIGBUS" asked for on the "mm: Support huge pfnmaps" v2 thread (Aug-Sep 2024).

The wire form is the pyroute2 message class in ``message.py``; this module knows
nothing about sockets or bytes.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections import deque
from dataclasses import dataclass
from itertools import repeat

from hugepfn.abi.sizes import format_size

# Named policies (design.md "Ground truth"): upstream is the kernel default, the
# other two are proposals from the thread, offered by name only.
POLICIES = ("upstream", "hard-offline", "split")

# action_result() strings (mm/memory-failure.c action_result; docs/kernel-reference.md: memory_failure).
RESULTS = ("Ignored", "Failed", "Delayed", "Recovered")

# What the policy did.  Documented vocabulary; the wire carries any short token so
# a new policy action does not need a protocol change.
KNOWN_ACTIONS = ("signalled", "zapped", "split", "ignored", "repaired", "consumption-loop")

# si_code values of a memory-error SIGBUS (include/uapi/asm-generic/siginfo.h).
BUS_MCEERR_AR = 4
BUS_MCEERR_AO = 5
SI_CODE_NAMES = {BUS_MCEERR_AR: "BUS_MCEERR_AR", BUS_MCEERR_AO: "BUS_MCEERR_AO"}

# The signal list rides in one nested attribute whose length field is 16 bits,
# so it is bounded; `signals_sent` always carries the full count.
MAX_SIGNAL_SUMMARIES = 1024

U8, U32, U64 = (1 << 8) - 1, (1 << 32) - 1, (1 << 64) - 1
PCI_BARS = range(6)
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class EventError(ValueError):
    """An event value that cannot be published (bad field)."""


def _check_uint(name: str, value: object, limit: int) -> None:
    if type(value) is not int or not 0 <= value <= limit:
        raise EventError(f"{name} must be an integer in 0..{limit:#x}, got {value!r}")


def _check_token(name: str, value: object) -> None:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise EventError(f"{name} must be a short token of [A-Za-z0-9._+-], got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SignalSummary:
    """One SIGBUS that kill_procs() sent: to which thread, with which si_code and si_addr."""

    tid: int
    code: int
    addr: int
    lsb: int = 12  # si_addr_lsb; PAGE_SHIFT on the pfnmap path

    def __post_init__(self) -> None:
        _check_uint("signal tid", self.tid, U32)
        _check_uint("signal code", self.code, U32)
        _check_uint("signal addr", self.addr, U64)
        _check_uint("signal lsb", self.lsb, U8)

    @property
    def code_name(self) -> str:
        return SI_CODE_NAMES.get(self.code, str(self.code))

    @classmethod
    def many(cls, tids: list, codes: list, addrs: list, lsbs: list) -> tuple["SignalSummary", ...]:
        """``SignalSummary(tid=tids[i], code=codes[i], addr=addrs[i], lsb=lsbs[i])`` for each i:
        the same objects, or the same EventError for the first bad field.  The columns are
        checked as a whole, then the objects are filled in without an __init__ call each (a
        memory_failure that signals 10,000 VMAs lists 1,024 of them: one by one, they were a
        tenth of the call)."""
        for name, column, limit in (("tid", tids, U32), ("code", codes, U32), ("addr", addrs, U64),
                                    ("lsb", lsbs, U8)):
            if column and not (set(map(type, column)) == _INT_ONLY and min(column) >= 0 and max(column) <= limit):
                return tuple(cls(tid=t, code=c, addr=a, lsb=b) for t, c, a, b in zip(tids, codes, addrs, lsbs))
        out = list(map(object.__new__, repeat(cls, len(tids))))
        # each field's slot filled for all of them by map() through its member descriptor (what
        # the frozen class's __init__ does with object.__setattr__), no Python-level loop
        for name, column in zip(_SUMMARY_FIELDS, (tids, codes, addrs, lsbs)):
            deque(map(getattr(cls, name).__set__, out, column), maxlen=0)
        return tuple(out)


_INT_ONLY = {int}
_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(SignalSummary))     # many() fills these


@dataclass(frozen=True, kw_only=True)
class MemoryFailureEvent:
    """What the host did about one poisoned pfn.

    ``seq`` and ``timestamp_ns`` are stamped by the publisher when left as None.
    """

    seq: int | None = None            # publisher-assigned, increasing per publishing process
    timestamp_ns: int | None = None   # CLOCK_REALTIME when published, nanoseconds
    pfn: int
    device: str            # PCI BDF, "0000:01:00.0"
    bar: int               # region index 0..5
    bar_offset: int        # byte offset of the poisoned page inside the BAR
    granularity: int       # bytes the error covers (4096, 2 MiB, 1 GiB)
    policy: str            # upstream | hard-offline | split
    action: str            # signalled | zapped | split | ignored | repaired | consumption-loop
    result: str            # Recovered | Ignored | Failed | Delayed
    signals_sent: int = 0
    signals: tuple[SignalSummary, ...] = ()
    consumption_count: int = 0
    profile: str = ""      # kernel profile the host emulates, "6.19"
    # who published it: the nlmsg_pid of the message (set by the publisher and by decode; not an
    # attribute of the event, so it takes no part in comparisons)
    publisher_pid: int | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_uint("pfn", self.pfn, U64)
        if not isinstance(self.device, str) or not _BDF.match(self.device):
            raise EventError(f"device must be a PCI address like 0000:01:00.0, got {self.device!r}")
        if type(self.bar) is not int or self.bar not in PCI_BARS:
            raise EventError(f"bar must be a region index 0..5, got {self.bar!r}")
        _check_uint("bar_offset", self.bar_offset, U64)
        _check_uint("granularity", self.granularity, U64)
        if self.granularity == 0 or self.granularity & (self.granularity - 1):
            raise EventError(f"granularity must be a power of two, got {self.granularity!r}")
        if self.policy not in POLICIES:
            raise EventError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        _check_token("action", self.action)
        if self.result not in RESULTS:
            raise EventError(f"result must be one of {', '.join(RESULTS)}, got {self.result!r}")
        _check_uint("signals_sent", self.signals_sent, U32)
        signals = tuple(self.signals)
        object.__setattr__(self, "signals", signals)  # accept any sequence, store a tuple
        if not all(map(isinstance, signals, repeat(SignalSummary))):
            raise EventError("signals must be SignalSummary values")
        if len(signals) > MAX_SIGNAL_SUMMARIES:
            raise EventError(f"at most {MAX_SIGNAL_SUMMARIES} signal summaries, got {len(signals)}")
        if len(signals) > self.signals_sent:
            raise EventError(f"{len(signals)} signal summaries but signals_sent={self.signals_sent}")
        _check_uint("consumption_count", self.consumption_count, U32)
        if self.profile != "":
            _check_token("profile", self.profile)
        if self.timestamp_ns is not None:
            _check_uint("timestamp_ns", self.timestamp_ns, U64)
        if self.seq is not None:
            _check_uint("seq", self.seq, U64)
        if self.publisher_pid is not None:
            _check_uint("publisher_pid", self.publisher_pid, U32)

    def stamped(self, *, seq: int, timestamp_ns: int, publisher_pid: int | None = None) -> "MemoryFailureEvent":
        """This event with seq/timestamp (and the publisher's pid) filled in where they were left unset."""
        return dataclasses.replace(
            self,
            seq=self.seq if self.seq is not None else seq,
            timestamp_ns=self.timestamp_ns if self.timestamp_ns is not None else timestamp_ns,
            publisher_pid=self.publisher_pid if self.publisher_pid is not None else publisher_pid,
        )

    # -- presentation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"signals": [dataclasses.asdict(s) for s in self.signals]}

    def to_trace(self) -> dict:
        """The deterministic facts, spelled as traces spell them (hex pfn, offsets, sizes and
        addresses; no seq, timestamp or publisher pid)."""
        out = self.to_dict()
        for key in ("seq", "timestamp_ns", "publisher_pid"):
            out.pop(key, None)
        for key in ("pfn", "bar_offset", "granularity"):
            out[key] = f"{out[key]:#x}"
        out["signals"] = [{**sig, "addr": f"{sig['addr']:#x}"} for sig in out["signals"]]
        return out

    def to_json(self) -> str:
        """One JSON object on one line (the `hugepfn monitor --json` format)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryFailureEvent":
        try:
            fields = dict(data)
            fields["signals"] = tuple(SignalSummary(**s) for s in fields.get("signals", ()))
            return cls(**fields)
        except TypeError as exc:  # unknown or missing keys
            raise EventError(f"not a memory-failure event: {exc}") from None

    @classmethod
    def from_json(cls, line: str) -> "MemoryFailureEvent":
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EventError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EventError("not a JSON object")
        return cls.from_dict(data)

    def summary(self) -> str:
        """One human-readable line (the `hugepfn monitor` text format)."""
        when = "-"
        if self.timestamp_ns is not None:
            # integer arithmetic: a float of ~1.7e18 ns cannot hold microseconds exactly
            seconds, nanos = divmod(self.timestamp_ns, 1_000_000_000)
            moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
            when = f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos // 1000:06d}Z"
        seq = "-" if self.seq is None else str(self.seq)
        sigs = ", ".join(f"tid {s.tid} {s.code_name} addr {s.addr:#x} lsb {s.lsb}" for s in self.signals)
        more = self.signals_sent - len(self.signals)
        if more:
            sigs = f"{sigs}, +{more} more" if sigs else f"+{more} more"
        pid = "-" if self.publisher_pid is None else str(self.publisher_pid)
        return (
            f"#{seq} {when} pid {pid} {self.device} BAR{self.bar}+{self.bar_offset:#x} pfn {self.pfn:#x} "
            f"{format_size(self.granularity)} policy {self.policy} action {self.action} "
            f"result {self.result} signals {self.signals_sent}"
            + (f" [{sigs}]" if sigs else "")
            + f" consumed {self.consumption_count}"
            + (f" profile {self.profile}" if self.profile else "")
        )


__all__ = [
    "BUS_MCEERR_AO", "BUS_MCEERR_AR", "EventError", "KNOWN_ACTIONS", "MAX_SIGNAL_SUMMARIES",
    "MemoryFailureEvent", "POLICIES", "RESULTS", "SignalSummary", "format_size",
]
