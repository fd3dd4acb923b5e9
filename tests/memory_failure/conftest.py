"""Machines for the memory-failure tests: an nvgrace-gpu device (usemem at pfn 0x4000000,
4 GiB; resmem at pfn 0x3f00000, 1 GiB) and a vfio-pci device, plus a qemu-like process."""
from __future__ import annotations

import pytest

from hugepfn.host.machine import Machine
from hugepfn.host.memory_failure import memory_failure_of

USEMEM_PHYS = 0x4000000000
USEMEM_PFN = USEMEM_PHYS >> 12
RESMEM_PHYS = 0x3F00000000
RESMEM_PFN = RESMEM_PHYS >> 12
BAR_PHYS = 0x3800000000
VA = 0x7F0000000000
GiB = 1 << 30
MiB = 1 << 20


def nvgrace_machine(kernel: str = "7.0", policy: str = "upstream", arch: str = "x86_64", resmem: bool = True,
                    sysctl: dict | None = None, config_memory_failure: bool = True,
                    pgoff_callback: str = "literal") -> Machine:
    m = Machine(kernel=kernel, arch=arch, policy=policy, sysctl=sysctl, memory_failure=config_memory_failure)
    m.create_process(4242, "qemu", [4242, 4243])
    m.add_device("gpu", "nvgrace-gpu", "0000:09:01.0", usemem=(USEMEM_PHYS, 4 * GiB),
                 resmem=(RESMEM_PHYS, GiB) if resmem else None, pgoff_callback=pgoff_callback)
    return m


def mf(m: Machine):
    return memory_failure_of(m)


def log_since(m: Machine, mark: int) -> list[str]:
    return m.klog.lines(mark)


def sigs(signals) -> list[tuple]:
    """(tid, signo, code name, addr, lsb, delivered) per signal."""
    return [(s.tid, s.signo, s.code_name, s.addr, s.addr_lsb, s.delivered) for s in signals]


@pytest.fixture
def nv():
    return nvgrace_machine()
