"""vm_fault_t: the result bits of a fault handler, as a named flag type plus plain-int constants.

The fault hot path uses the plain ints (IntFlag arithmetic is slow); `fault_name` turns
a result into the kernel names joined by "|" when a trace or a person asks.
"""
from __future__ import annotations

import enum


class VmFault(enum.IntFlag):
    """include/linux/mm_types.h `enum vm_fault_reason` (current numbering)."""
    VM_FAULT_OOM = 0x000001
    VM_FAULT_SIGBUS = 0x000002
    VM_FAULT_MAJOR = 0x000004
    VM_FAULT_HWPOISON = 0x000010
    VM_FAULT_HWPOISON_LARGE = 0x000020
    VM_FAULT_SIGSEGV = 0x000040
    VM_FAULT_NOPAGE = 0x000100
    VM_FAULT_LOCKED = 0x000200
    VM_FAULT_RETRY = 0x000400
    VM_FAULT_FALLBACK = 0x000800
    VM_FAULT_DONE_COW = 0x001000
    VM_FAULT_NEEDDSYNC = 0x002000
    VM_FAULT_COMPLETED = 0x004000

    def __str__(self) -> str:
        return fault_name(int(self))


# Plain-int twins of the members, for the hot path (IntFlag arithmetic is slow).
VM_FAULT_OOM = VmFault.VM_FAULT_OOM.value
VM_FAULT_SIGBUS = VmFault.VM_FAULT_SIGBUS.value
VM_FAULT_MAJOR = VmFault.VM_FAULT_MAJOR.value
VM_FAULT_HWPOISON = VmFault.VM_FAULT_HWPOISON.value
VM_FAULT_HWPOISON_LARGE = VmFault.VM_FAULT_HWPOISON_LARGE.value
VM_FAULT_SIGSEGV = VmFault.VM_FAULT_SIGSEGV.value
VM_FAULT_NOPAGE = VmFault.VM_FAULT_NOPAGE.value
VM_FAULT_LOCKED = VmFault.VM_FAULT_LOCKED.value
VM_FAULT_RETRY = VmFault.VM_FAULT_RETRY.value
VM_FAULT_FALLBACK = VmFault.VM_FAULT_FALLBACK.value
VM_FAULT_DONE_COW = VmFault.VM_FAULT_DONE_COW.value
VM_FAULT_NEEDDSYNC = VmFault.VM_FAULT_NEEDDSYNC.value
VM_FAULT_COMPLETED = VmFault.VM_FAULT_COMPLETED.value
VM_FAULT_ERROR = (VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON
                  | VM_FAULT_HWPOISON_LARGE | VM_FAULT_FALLBACK)

# HWPOISON_LARGE carries the hstate index in bits 16..19 (VM_FAULT_SET_HINDEX).
VM_FAULT_HINDEX_SHIFT = 16
VM_FAULT_HINDEX_MASK = 0xF << VM_FAULT_HINDEX_SHIFT

_NAMES = tuple((int(m), m.name) for m in VmFault)
_NAME_CACHE: dict[int, str] = {}


def fault_name(ret: int) -> str:
    """`0x900` -> "VM_FAULT_NOPAGE|VM_FAULT_FALLBACK"; 0 -> "0" (the trace's spelling).

    Bits without a name (e.g. the HINDEX of HWPOISON_LARGE) are left out.
    """
    name = _NAME_CACHE.get(ret)
    if name is None:
        name = "|".join(n for bit, n in _NAMES if ret & bit) or "0"
        _NAME_CACHE[ret] = name
    return name


def parse_fault_name(text: str) -> int:
    """Inverse of fault_name: "VM_FAULT_NOPAGE|VM_FAULT_FALLBACK" -> 0x900; raises ValueError."""
    if text.strip() == "0":
        return 0
    value = 0
    for part in text.split("|"):
        try:
            value |= int(VmFault[part.strip()])
        except KeyError:
            raise ValueError(f"unknown vm_fault_t name {part.strip()!r}") from None
    return value
