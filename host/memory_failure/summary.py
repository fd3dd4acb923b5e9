"""The per-policy summary of a run: leaf entries per level, faults taken, bytes made unreachable
by the poison handling (the blast radius), poisoned pages the driver refuses, signals sent."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SIZE

if TYPE_CHECKING:
    from ..machine import Machine

SUMMARY_ROWS = (
    ("pud", "PUD leaves (1 GiB)"),
    ("pmd", "PMD leaves (2 MiB)"),
    ("pte", "PTE leaves (4 KiB)"),
    ("faults", "faults taken"),
    ("unreachable_bytes", "bytes unreachable (blast radius)"),
    ("refused_bytes", "bytes refused for good (poisoned pages)"),
    ("signals", "signals sent"),
)


def signal_key(sig) -> str:
    return f"{sig.signo} {sig.code_name}" if sig.code_name else sig.signo


def policy_summary(machine: "Machine") -> dict:
    """Totals over every process of ``machine`` (one run of one policy)."""
    from . import memory_failure_of

    mf = memory_failure_of(machine)
    pud = pmd = pte = faults = 0
    for proc in machine.tasks:
        a, b, c = proc.mm.pgtable.counts()
        pud, pmd, pte, faults = pud + a, pmd + b, pte + c, faults + proc.mm.nr_faults
    unreachable = sum(z.zapped.length for out in mf.outcomes for z in out.zapped)
    refused = sum(len(state.poison) for state in mf.drivers.values()) * PAGE_SIZE
    kinds = Counter(signal_key(s) for s in machine.tasks.journal)
    return {"policy": mf.policy.name, "pud": pud, "pmd": pmd, "pte": pte, "faults": faults,
            "unreachable_bytes": unreachable, "refused_bytes": refused,
            "signals": len(machine.tasks.journal), "signal_kinds": dict(sorted(kinds.items())),
            "consumption_loops": len(mf.guard.events)}


def format_bytes(n: int) -> str:
    """4 KiB, 1 GiB; sums that are not a whole unit get two decimals (1.00 GiB + 8 KiB -> "1.00 GiB")."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}" if n % (1 << shift) == 0 else f"{n / (1 << shift):.2f} {unit}"
    return f"{n} B"
