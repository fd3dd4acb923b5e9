"""What the guest probes in the kernel: tracefs kprobe definitions and dynamic-debug sites.

Each definition is offered to every kernel; tracefs refuses the ones whose symbol a kernel
does not have (the guest reports which were taken), so one list serves 6.1 .. 7.3.  Event
names (the part after ``xc/``) are what hugepfn.crosscheck.observe reads.  ``$argN`` is the
N-th function argument (x86-64 and arm64 alike); ``+24($arg1)`` is vm_fault.address (the
struct starts with vma, gfp_mask, pgoff, address in every kernel of the matrix).
"""
from __future__ import annotations

VMF_ADDRESS = "+24($arg1):x64"

KPROBES = (
    # the mm's entry for every fault of the scenario processes
    "p:xc/hmf handle_mm_fault address=$arg2:x64 flags=$arg3:x32",
    "r:xc/hmf_ret handle_mm_fault ret=$retval:x32",
    # vfio-pci's handlers: huge_fault (6.12+), the order-0 fault (6.12+), the 6.1 .. 6.11 fault
    f"p:xc/hf vfio_pci_core:vfio_pci_mmap_huge_fault order=$arg2:u32 addr={VMF_ADDRESS}",
    "r:xc/hf_ret vfio_pci_core:vfio_pci_mmap_huge_fault ret=$retval:x32",
    f"p:xc/pf vfio_pci_core:vfio_pci_mmap_page_fault addr={VMF_ADDRESS}",
    "r:xc/pf_ret vfio_pci_core:vfio_pci_mmap_page_fault ret=$retval:x32",
    f"p:xc/f vfio_pci_core:vfio_pci_mmap_fault addr={VMF_ADDRESS}",
    "r:xc/f_ret vfio_pci_core:vfio_pci_mmap_fault ret=$retval:x32",
    # nvgrace-gpu's handlers (generation 2)
    f"p:xc/nvhf nvgrace_gpu_vfio_pci:nvgrace_gpu_vfio_pci_huge_fault order=$arg2:u32 addr={VMF_ADDRESS}",
    "r:xc/nvhf_ret nvgrace_gpu_vfio_pci:nvgrace_gpu_vfio_pci_huge_fault ret=$retval:x32",
    f"p:xc/nvf nvgrace_gpu_vfio_pci:nvgrace_gpu_vfio_pci_fault addr={VMF_ADDRESS}",
    "r:xc/nvf_ret nvgrace_gpu_vfio_pci:nvgrace_gpu_vfio_pci_fault ret=$retval:x32",
    # what got installed: one leaf per helper call
    f"p:xc/ipud vmf_insert_pfn_pud pfn=$arg2:x64 addr={VMF_ADDRESS}",
    "r:xc/ipud_ret vmf_insert_pfn_pud ret=$retval:x32",
    f"p:xc/ipmd vmf_insert_pfn_pmd pfn=$arg2:x64 addr={VMF_ADDRESS}",
    "r:xc/ipmd_ret vmf_insert_pfn_pmd ret=$retval:x32",
    f"p:xc/ipudp vmf_insert_pfn_pud_prot pfn=$arg2:x64 addr={VMF_ADDRESS}",
    "r:xc/ipudp_ret vmf_insert_pfn_pud_prot ret=$retval:x32",
    f"p:xc/ipmdp vmf_insert_pfn_pmd_prot pfn=$arg2:x64 addr={VMF_ADDRESS}",
    "r:xc/ipmdp_ret vmf_insert_pfn_pmd_prot ret=$retval:x32",
    "p:xc/ipte vmf_insert_pfn addr=$arg2:x64 pfn=$arg3:x64",
    "r:xc/ipte_ret vmf_insert_pfn ret=$retval:x32",
    "p:xc/remap remap_pfn_range addr=$arg2:x64 pfn=$arg3:x64 size=$arg4:x64",
    "r:xc/remap_ret remap_pfn_range ret=$retval:s32",
    # memory failure
    "p:xc/mf memory_failure pfn=$arg1:x64 flags=$arg2:x32",
    "r:xc/mf_ret memory_failure ret=$retval:s32",
)

# dev_dbg sites the model prints (its log holds them with the debug lines enabled)
DYNDBG_FUNCS = ("vfio_pci_mmap_huge_fault", "nvgrace_gpu_vfio_pci_huge_fault")
