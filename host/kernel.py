"""Kernel behaviour profiles (one per kernel series: "6.1" .. "7.3") and architectures (x86_64, arm64).

A profile pins every version difference (docs/kernel-reference.md) that the model
emulates; code asks the profile, never a version string.
"""
from __future__ import annotations

from dataclasses import dataclass

from .mm.constants import PMD_ORDER, PUD_ORDER


@dataclass(frozen=True)
class KernelProfile:
    """One kernel series as the model emulates it.  Each field is a behaviour that differs
    between series; docs/kernel-reference.md says which kernel code each one follows and
    which crosscheck run showed it."""
    name: str
    # vfio-pci huge_fault alignment rule: "page" = the faulting page itself must be
    # order-aligned (v6.12 .. v6.15-rc5); "order" = align the address down to the order
    # (v6.15-rc6+, and Debian's 6.12 stable by backport).
    vfio_alignment: str = "order"
    # THP sysfs `enabled` gates huge pfnmaps on the fault path.  Since "mm: huge_memory:
    # bypass THP tuneables for PFNMAP VMAs with ->huge_fault" (vma_file_bypass_thp_tuneables)
    # it does not; Debian's 6.12 stable already carries that.
    thp_sysfs_gates_pfnmap: bool = False
    # memory_failure() handles pfns without struct page (memory_failure_pfn, v6.19).
    pfnmap_memory_failure: bool = True
    # register_pfn_address_space takes a pfn_to_vma_pgoff callback (v6.19-rc4 fixup).
    pfn_to_vma_pgoff_callback: bool = True
    # vfio-pci has ->huge_fault (huge pfnmaps, v6.12); before, ->fault maps the whole VMA
    # with io_remap_pfn_range on the first fault ("remap-vma").
    vfio_fault: str = "huge"
    # A fault is first tried under the per-VMA lock; a file fault that reaches ->fault of a
    # VMA without ->map_pages returns VM_FAULT_RETRY there (vmf_can_call_fault) and the
    # whole fault is retried under mmap_lock, so the driver sees its huge attempts twice.
    fault_vma_lock_retry: bool = True
    # pci_dev_save_and_disable / pci_dev_restore warn "resetting" / "reset done" for a
    # driver without reset_prepare / reset_done handlers.
    pci_reset_warns: bool = True
    # What a VMA boundary inside a huge leaf does (vma_adjust_trans_huge): "leaf" = the PUD
    # or PMD leaf across it is split, i.e. cleared (split_huge_leaf, Debian's 6.12);
    # "pmd" = only a PMD leaf at a boundary that is not 2 MiB aligned is split; a PUD leaf
    # stays, and at such a boundary mm_find_pmd walks into the PUD leaf as if it were a PMD
    # table and the kernel oopses in __split_huge_pmd.
    vma_split_huge: str = "pmd"
    # mremap of a huge pfnmap PUD: "move" (move_huge_pud) or "bad-pud" (the move's walk does
    # not see the leaf as huge: pud_clear_bad logs it and clears it; the new range refaults).
    mremap_huge_pud: str = "bad-pud"
    # where pud_clear_bad's pud_ERROR is (the log names the source line): mm/pgtable-generic.c
    bad_pud_line: int = 44
    # PR_SET_THP_DISABLE accepts PR_THP_DISABLE_EXCEPT_ADVISED in arg3 (MADV_HUGEPAGE VMAs
    # keep huge faults); older kernels refuse any arg3 with -EINVAL.
    thp_disable_except_advised: bool = True
    # the tracefs system of the memory_failure_event tracepoint: "ras" in every Debian build
    # crosschecked (6.1 .. 7.3: the guest lists events/ras and finds no memory_failure system),
    # although an mm-tree patch of late 2025 moved it to include/trace/events/memory-failure.h
    memory_failure_trace_system: str = "ras"
    # the line of get_pat_info's WARN_ON_ONCE in arch/x86/mm/pat/memtype.c (6.1: an mremap of a
    # whole-VMA remap_pfn_range mapping warns there)
    pat_warn_line: int = 0

    @property
    def version(self) -> tuple[int, ...]:
        """The series as numbers ("6.12.0" -> (6, 12, 0)).  A variant driver states its own
        history with it ("since v6.19"); the core's differences are the fields above."""
        return tuple(int(part) for part in self.name.split("."))


def _series(name: str, **differences) -> KernelProfile:
    return KernelProfile(name=name, **differences)


_6_12_STABLE = dict(vma_split_huge="leaf", bad_pud_line=42, thp_disable_except_advised=False)
_BEFORE_PFNMAP_MF = dict(pfnmap_memory_failure=False, pfn_to_vma_pgoff_callback=False)

PROFILES: dict[str, KernelProfile] = {
    "6.1": _series("6.1", vfio_fault="remap-vma", fault_vma_lock_retry=False, thp_sysfs_gates_pfnmap=True,
                   pci_reset_warns=False, pat_warn_line=1028, **_6_12_STABLE, **_BEFORE_PFNMAP_MF),
    "6.12": _series("6.12", pci_reset_warns=False, **_6_12_STABLE, **_BEFORE_PFNMAP_MF),
    "6.16": _series("6.16", bad_pud_line=42, thp_sysfs_gates_pfnmap=True, thp_disable_except_advised=False, **_BEFORE_PFNMAP_MF),
    "6.17": _series("6.17", bad_pud_line=42, thp_sysfs_gates_pfnmap=True, thp_disable_except_advised=False, **_BEFORE_PFNMAP_MF),
    "6.18": _series("6.18", bad_pud_line=43, thp_sysfs_gates_pfnmap=True, **_BEFORE_PFNMAP_MF),
    "6.19": _series("6.19", thp_sysfs_gates_pfnmap=True),
    "7.0": _series("7.0"),
    "7.1": _series("7.1"),
    "7.2": _series("7.2"),
    "7.3": _series("7.3"),
    # v6.12.0 .. v6.15-rc5 as released, before the stable backports Debian's 6.12 carries
    "6.12.0": _series("6.12.0", vfio_alignment="page", thp_sysfs_gates_pfnmap=True, pci_reset_warns=False,
                      thp_disable_except_advised=False, **_BEFORE_PFNMAP_MF),
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
