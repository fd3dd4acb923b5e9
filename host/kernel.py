"""Kernel behaviour profiles ("6.12", "6.15", "6.19", "7.0") and architectures (x86_64, arm64).

A profile pins every version difference of reference/kernel-semantics.md that the model
emulates; code asks the profile, never a version string.
"""
from __future__ import annotations

from dataclasses import dataclass

from .mm.constants import PMD_ORDER, PUD_ORDER


@dataclass(frozen=True)
class KernelProfile:
    name: str
    # vfio-pci huge_fault alignment rule (ref 1.5): "page" = the faulting page itself must be
    # order-aligned (v6.12 .. v6.15-rc5); "order" = align the address down to the order (v6.15-rc6+).
    vfio_alignment: str
    # THP sysfs `enabled` gates huge pfnmaps on the fault path (ref 1.2 / open question 1).
    thp_sysfs_gates_pfnmap: bool
    # nvgrace-gpu generation (ref 2.2): 1 = remap_pfn_range at mmap (PTEs, vm_pgoff = pfn),
    # 2 = fault/huge_fault + readiness check after reset.
    nvgrace_generation: int
    # memory_failure() handles pfns without struct page (memory_failure_pfn, v6.19).
    pfnmap_memory_failure: bool
    # register_pfn_address_space takes a pfn_to_vma_pgoff callback (v6.19-rc4 fixup).
    pfn_to_vma_pgoff_callback: bool
    # nvgrace-gpu registers usemem/resmem for poison handling at open (v7.0).
    nvgrace_registers_memory: bool


PROFILES: dict[str, KernelProfile] = {
    "6.12": KernelProfile("6.12", "page", True, 1, False, False, False),
    "6.15": KernelProfile("6.15", "order", True, 1, False, False, False),
    "6.19": KernelProfile("6.19", "order", True, 2, True, True, False),
    "7.0": KernelProfile("7.0", "order", True, 2, True, True, True),
}


@dataclass(frozen=True)
class Arch:
    name: str
    pmd_pfnmap: bool          # CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
    pud_pfnmap: bool          # CONFIG_ARCH_SUPPORTS_PUD_PFNMAP (needs THP-PUD)
    logs_mce_kill: bool       # x86 do_sigbus prints "MCE: Killing ..." for VM_FAULT_HWPOISON

    @property
    def huge_orders(self) -> tuple[int, ...]:
        return tuple(o for o, ok in ((PUD_ORDER, self.pud_pfnmap), (PMD_ORDER, self.pmd_pfnmap)) if ok)


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", True, True, True),
    "arm64": Arch("arm64", True, False, False),
}

THP_MODES = ("always", "madvise", "never")
POLICIES = ("upstream", "hard-offline", "split")


def profile(name: str) -> KernelProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kernel profile {name!r} (choose from {', '.join(PROFILES)})") from None


def arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r} (choose from {', '.join(ARCHES)})") from None
