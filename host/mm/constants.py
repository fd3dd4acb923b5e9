"""Page geometry and VMA flag bits of x86-64 / arm64 with 4 KiB pages (the kernel's names)."""
from __future__ import annotations

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

PMD_ORDER = 9                       # 2 MiB
PUD_ORDER = 18                      # 1 GiB
PMD_SHIFT = PAGE_SHIFT + PMD_ORDER
PUD_SHIFT = PAGE_SHIFT + PUD_ORDER
PMD_SIZE = 1 << PMD_SHIFT
PUD_SIZE = 1 << PUD_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PUD_MASK = ~(PUD_SIZE - 1)

# x86-64 with 4-level paging: user addresses end below 128 TiB (minus a guard page).
TASK_SIZE = (1 << 47) - PAGE_SIZE

# VFIO region encoding in file offsets (vfio_pci_priv.h): region index in bits 40+.
VFIO_PCI_OFFSET_SHIFT = 40
VFIO_PCI_PGOFF_SHIFT = VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT      # 28: index = vm_pgoff >> 28
VFIO_PCI_PGOFF_MASK = (1 << VFIO_PCI_PGOFF_SHIFT) - 1


class VmFlag(enum.IntFlag):
    """vm_flags bits (include/linux/mm.h); only the ones the model reads or sets."""
    VM_READ = 0x00000001
    VM_WRITE = 0x00000002
    VM_EXEC = 0x00000004
    VM_SHARED = 0x00000008
    VM_MAYREAD = 0x00000010
    VM_MAYWRITE = 0x00000020
    VM_MAYSHARE = 0x00000080
    VM_PFNMAP = 0x00000400
    VM_IO = 0x00004000
    VM_DONTEXPAND = 0x00040000
    VM_MIXEDMAP = 0x10000000
    VM_HUGEPAGE = 0x20000000
    VM_NOHUGEPAGE = 0x40000000
    VM_DONTDUMP = 0x04000000
    VM_ALLOW_ANY_UNCACHED = 1 << 39     # an arch "high" bit on arm64; a no-op flag elsewhere


VM_READ = int(VmFlag.VM_READ)
VM_WRITE = int(VmFlag.VM_WRITE)
VM_EXEC = int(VmFlag.VM_EXEC)
VM_SHARED = int(VmFlag.VM_SHARED)
VM_MAYREAD = int(VmFlag.VM_MAYREAD)
VM_MAYWRITE = int(VmFlag.VM_MAYWRITE)
VM_MAYSHARE = int(VmFlag.VM_MAYSHARE)
VM_SPECIAL = 0x00004000 | 0x00040000 | 0x00000400 | 0x10000000   # IO | DONTEXPAND | PFNMAP | MIXEDMAP
VM_PFNMAP = int(VmFlag.VM_PFNMAP)
VM_IO = int(VmFlag.VM_IO)
VM_DONTEXPAND = int(VmFlag.VM_DONTEXPAND)
VM_MIXEDMAP = int(VmFlag.VM_MIXEDMAP)
VM_HUGEPAGE = int(VmFlag.VM_HUGEPAGE)
VM_NOHUGEPAGE = int(VmFlag.VM_NOHUGEPAGE)
VM_DONTDUMP = int(VmFlag.VM_DONTDUMP)
VM_ALLOW_ANY_UNCACHED = int(VmFlag.VM_ALLOW_ANY_UNCACHED)

# madvise advice values (include/uapi/asm-generic/mman-common.h).
MADV_NORMAL = 0
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_HWPOISON = 100

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
