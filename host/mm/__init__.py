"""hugepfn.host.mm: the memory-management model — VMAs, mm, page table, address_space,
vm_fault_t, the fault cascade, insert helpers and zap."""
from .constants import *  # noqa: F401,F403
from .mapping import AddressSpace, File
from .mm import MM
from .pagetable import Leaf, PageTable, Zapped
from .vm_fault import VmFault, fault_name, parse_fault_name
from .vma import Vma, VmOperations

