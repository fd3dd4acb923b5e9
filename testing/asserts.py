"""Assertions for fault-injection tests, with failure messages that show what happened.

Each takes whatever a test has at hand: a list of signals, an AccessResult / TouchResult /
PoisonResult (anything with ``.signals``), a Proc (its signals), a Host or Machine (every
signal).  They raise AssertionError (so pytest shows the message) and return what matched.
"""
from __future__ import annotations

from hugepfn.host.tasks import BUS_CODE_NAMES, SEGV_CODE_NAMES, SI_KERNEL, Signal

__tracebackhide__ = True

# si_code names -> values (BUS_ADRERR and SEGV_ACCERR share the value 2: keep both names)
_CODES = {name: code for names in (BUS_CODE_NAMES, SEGV_CODE_NAMES) for code, name in names.items()}
_CODES["SI_KERNEL"] = SI_KERNEL
LEVELS = ("pud", "pmd", "pte")


def _signals_of(source) -> list[Signal]:
    # .signals first: an AccessResult is a tuple too (a NamedTuple), not a list of signals
    if hasattr(source, "signals"):            # AccessResult, TouchResult, PoisonResult, Proc, Host
        return list(source.signals or [])
    if isinstance(source, (list, tuple)):
        return list(source)
    if hasattr(source, "tasks"):              # Machine
        return list(source.tasks.journal)
    raise TypeError(f"cannot find signals in {type(source).__name__} (pass a list of signals, "
                    "an AccessResult, a PoisonResult, a Proc, a Host or a Machine)")


def format_signal(s: Signal) -> str:
    parts = [f"tid={s.tid}", s.signo]
    if s.code is not None:
        parts.append(s.code_name)
    if s.addr is not None:
        parts.append(f"addr={s.addr:#x}")
    if s.addr_lsb is not None:
        parts.append(f"lsb={s.addr_lsb}")
    if not s.delivered:
        parts.append("(not queued: already pending)")
    return " ".join(parts)


def _listing(signals: list[Signal]) -> str:
    if not signals:
        return "  (no signals)"
    return "\n".join(f"  {format_signal(s)}" for s in signals)


def _code_value(code) -> int | None:
    if code is None or isinstance(code, int):
        return code
    try:
        return _CODES[code]
    except KeyError:
        raise ValueError(f"unknown si_code {code!r} (known: {', '.join(sorted(_CODES))})") from None


def assert_signal(source, code="BUS_MCEERR_AR", addr: int | None = None, lsb: int | None = 12,
                  tid: int | None = None, signo: str = "SIGBUS", count: int | None = 1) -> list[Signal]:
    """Assert that ``count`` signals (None: at least one) match every given field.

    ``code`` is a name ("BUS_MCEERR_AR", "BUS_MCEERR_AO", "BUS_ADRERR", ...) or number; ``addr``
    the exact si_addr; ``lsb`` si_addr_lsb (12 by default, None to ignore); ``tid`` the thread.
    Returns the matching signals."""
    __tracebackhide__ = True
    signals = _signals_of(source)
    want_code = _code_value(code)
    matches = [s for s in signals
               if s.signo == signo
               and (want_code is None or s.code == want_code)
               and (addr is None or s.addr == addr)
               and (lsb is None or s.addr_lsb == lsb)
               and (tid is None or s.tid == tid)]
    if (count is None and matches) or len(matches) == count:
        return matches
    wanted = [signo]
    if code is not None:
        wanted.append(code if isinstance(code, str) else str(code))
    if addr is not None:
        wanted.append(f"addr={addr:#x}")
    if lsb is not None:
        wanted.append(f"lsb={lsb}")
    if tid is not None:
        wanted.append(f"tid={tid}")
    how_many = "at least one" if count is None else f"exactly {count}"
    raise AssertionError(f"expected {how_many} signal {' '.join(wanted)}, found {len(matches)} matching; "
                         f"signals sent:\n{_listing(signals)}")


def assert_no_signal(source, signo: str | None = None) -> None:
    """Assert that no signal (or none named ``signo``) was sent."""
    __tracebackhide__ = True
    signals = _signals_of(source)
    bad = [s for s in signals if signo is None or s.signo == signo]
    if bad:
        what = "no signal" if signo is None else f"no {signo}"
        raise AssertionError(f"expected {what}, but {len(bad)} sent:\n{_listing(bad)}")


def _leaf_of(source, addr: int | None, pid: int | None):
    """(leaf, where) for an AccessResult, a BarMapping/Proc, a Host or a Machine."""
    if hasattr(source, "leaf") and hasattr(source, "ret"):          # AccessResult
        return source.leaf, "after the access"
    if addr is None:
        raise TypeError("assert_mapping needs addr= unless given an AccessResult")
    proc = getattr(source, "proc", None) or (source if hasattr(source, "mmap_bar") else None)
    if proc is not None:
        return proc.leaf(addr), f"in pid {proc.pid}"
    machine = getattr(source, "machine", source)
    if not hasattr(machine, "tasks"):
        raise TypeError(f"cannot find a page table in {type(source).__name__}")
    if pid is None:
        user = [p for p in machine.tasks if p.mm is not None]
        if len(user) != 1:
            raise TypeError(f"the machine has {len(user)} user processes: pass pid=")
        pid = user[0].pid
    return machine.tasks.process(pid).mm.pgtable.lookup(addr), f"in pid {pid}"


def assert_mapping(source, addr: int | None = None, level: str | None = "pmd", pid: int | None = None,
                   pfn: int | None = None):
    """Assert what maps ``addr``: a leaf of ``level`` ("pud" | "pmd" | "pte"), or nothing
    (``level=None``); with ``pfn``, also the pfn ``addr`` resolves to.  Returns the leaf."""
    __tracebackhide__ = True
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)} or None, got {level!r}")
    leaf, where = _leaf_of(source, addr, pid)
    at = f" at {addr:#x}" if addr is not None else ""
    if leaf is None:
        if level is None:
            return None
        raise AssertionError(f"expected a {level.upper()} mapping{at} {where}, but nothing maps it")
    got = f"{leaf.level.upper()} leaf va={leaf.va:#x} pfn={leaf.pfn:#x}"
    if level is None:
        raise AssertionError(f"expected no mapping{at} {where}, found a {got}")
    if leaf.level != level:
        raise AssertionError(f"expected a {level.upper()} mapping{at} {where}, found a {got}")
    if pfn is not None:
        got_pfn = leaf.pfn_at(addr if addr is not None else leaf.va)
        if got_pfn != pfn:
            where_addr = f"{addr:#x}" if addr is not None else "the access"
            raise AssertionError(f"expected {where_addr} to map pfn {pfn:#x} {where}, it maps {got_pfn:#x} ({got})")
    return leaf
