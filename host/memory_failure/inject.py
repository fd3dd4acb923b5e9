"""Injection interfaces (docs/kernel-reference.md: injection interfaces) as the host offers them for device memory.

* hard_offline_page (sysfs): a physical address; works on pfnmap memory; memory_failure(pfn,
  MF_SW_SIMULATED) with the writer as ``current``; -EOPNOTSUPP becomes success.
* soft_offline_page (sysfs): refused with -ENXIO (nothing to migrate without struct page).
* hwpoison/corrupt-pfn (debugfs): refused with -ENXIO for a pfn without struct page.
* MADV_HWPOISON: refused with -EFAULT (GUP does not take VM_IO|VM_PFNMAP pages).
* hwpoison/unpoison-pfn (debugfs): -EIO (no online page behind the pfn).
All of them need CAP_SYS_ADMIN (-EPERM first).
"""
from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE
from .flags import MF_SW_SIMULATED

if TYPE_CHECKING:
    from ..tasks import Thread
    from .core import MemoryFailure


_ULL = re.compile(r"^\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\n?$")


def parse_kernel_ull(text: str | int) -> int | None:
    """kstrtoull(buf, 0, ...): decimal, 0x hex or 0 octal, one trailing newline allowed."""
    if isinstance(text, int):
        return text if 0 <= text < 1 << 64 else None
    m = _ULL.match(text)
    if m is None:
        return None
    s = m.group(1)
    value = int(s, 16) if s[:2] in ("0x", "0X") else int(s, 8) if s.startswith("0") else int(s)
    return value if value < 1 << 64 else None


def hard_offline_page(mf: "MemoryFailure", value: str | int, current: "Thread",
                      cap_sys_admin: bool = True) -> int:
    """write(2) to /sys/devices/system/memory/hard_offline_page: bytes written or -errno."""
    if not mf.config_memory_failure:
        return -errno.ENOENT            # the attribute does not exist without CONFIG_MEMORY_FAILURE
    if not cap_sys_admin:
        return -errno.EPERM
    phys = parse_kernel_ull(value)
    if phys is None:
        return -errno.EINVAL
    ret = mf.memory_failure(phys >> PAGE_SHIFT, MF_SW_SIMULATED, current)
    if ret == -errno.EOPNOTSUPP:
        ret = 0
    count = len(value) if isinstance(value, str) else len(f"{value:#x}\n")
    return ret if ret else count


def soft_offline_page(mf: "MemoryFailure", value: str | int, cap_sys_admin: bool = True) -> int:
    """write(2) to /sys/devices/system/memory/soft_offline_page: a physical address; soft offline
    only migrates struct pages, so !pfn_valid() -> -ENXIO."""
    if not mf.config_memory_failure:
        return -errno.ENOENT
    if not cap_sys_admin:
        return -errno.EPERM
    if parse_kernel_ull(value) is None:
        return -errno.EINVAL
    return -errno.ENXIO


def corrupt_pfn(mf: "MemoryFailure", pfn: int, cap_sys_admin: bool = True) -> int:
    """debugfs hwpoison/corrupt-pfn: pfn_valid() is false for device memory -> -ENXIO."""
    if not cap_sys_admin:
        return -errno.EPERM
    return -errno.ENXIO


def unpoison_pfn(mf: "MemoryFailure", pfn: int, cap_sys_admin: bool = True) -> int:
    """debugfs hwpoison/unpoison-pfn: no online page behind a device pfn -> -EIO."""
    if not cap_sys_admin:
        return -errno.EPERM
    return -errno.EIO


def madvise_hwpoison(mf: "MemoryFailure", thread: "Thread", start: int, length: int,
                     cap_sys_admin: bool = True) -> int:
    """madvise(start, len, MADV_HWPOISON): GUP refuses VM_IO|VM_PFNMAP pages -> -EFAULT."""
    if not cap_sys_admin:
        return -errno.EPERM
    if start % PAGE_SIZE or length < 0:
        return -errno.EINVAL
    if length == 0:
        return 0
    # get_user_pages_fast() on the first page: no VMA or a pfnmap VMA both fail with -EFAULT
    return -errno.EFAULT
