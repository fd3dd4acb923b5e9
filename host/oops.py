"""A kernel crash the model predicts: what the real kernel prints when it oopses at a step.

The model raises KernelOops where the kernel it emulates dereferences something it must not
(the fault or split path treats a huge pfnmap leaf as a page table, say).  The scenario
runner records the step with ret "Oops", the first BUG line and the call trace the kernel
prints, and runs no further step: the machine is gone.  ``<ptr>`` stands for an address
that is random per boot (KASLR, hashed pointers).
"""
from __future__ import annotations


class KernelOops(RuntimeError):
    def __init__(self, first_line: str, trace: tuple[str, ...], why: str) -> None:
        super().__init__(f"{first_line} ({why})")
        self.first_line = first_line
        self.trace = trace          # the innermost functions of the call trace, innermost first
        self.why = why

    def to_trace(self) -> dict:
        return {"first_line": self.first_line, "call_trace": list(self.trace), "why": self.why}
