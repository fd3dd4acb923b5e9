"""hugepfn.host.mm: the memory-management model — VMAs, mm, page table, address_space,
vm_fault_t, the fault cascade, insert helpers and zap."""
from .constants import *  # noqa: F401,F403
from .mapping import AddressSpace, File
from .mm import MM
from .pagetable import Leaf, PageTable, Zapped
from .fault import VmFaultCtx, handle_mm_fault
from .insert import KernelBug, vmf_insert_pfn, vmf_insert_pfn_pmd, vmf_insert_pfn_pud
from .vm_fault import (VM_FAULT_DONE_COW, VM_FAULT_ERROR, VM_FAULT_FALLBACK, VM_FAULT_HWPOISON,
                       VM_FAULT_HWPOISON_LARGE, VM_FAULT_LOCKED, VM_FAULT_MAJOR, VM_FAULT_NOPAGE, VM_FAULT_OOM,
                       VM_FAULT_RETRY, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VmFault, fault_name, parse_fault_name)
from .zap import unmap_mapping_pages, unmap_mapping_range, zap_vma_range
from .vma import Vma, VmOperations

