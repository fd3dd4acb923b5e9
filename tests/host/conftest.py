"""Shared set-up for the host model tests: a machine with one vfio-pci device and a process."""
from __future__ import annotations

import pytest

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.mm.vm_fault import fault_name

BAR_PHYS = 0x3800000000          # 1 GiB aligned
VA = 0x7f0000000000              # 1 GiB aligned
PID = 4242
# the huge-pfnmap profiles: crosschecked series (6.12, 6.16, 7.3) and the two between them that
# Debian ships without modules here (6.19, 7.0)
PROFILES = ("6.12", "6.16", "6.19", "7.0", "7.3")
PREFIX = "vfio-pci 0000:01:00.0: "


def make_machine(kernel: str = "7.3", arch: str = "x86_64", thp: str = "always", bar_size: int = 4 << 30,
                 bar_phys: int = BAR_PHYS, **kw) -> Machine:
    m = Machine(kernel=kernel, arch=arch, thp=thp, **kw)
    m.create_process(PID, "qemu", [PID, PID + 1])
    m.add_device("D", bars=[PciBar(0, bar_phys, bar_size), PciBar(2, 0x3f00000000, 0x4000)])
    return m


def calls_named(result) -> list[tuple[int, str]]:
    return [(order, fault_name(ret)) for order, ret in result.calls]


def dbg(order: int, pgoff: int, ret: int, bar: int = 0) -> str:
    return f"{PREFIX}vfio_pci_mmap_huge_fault(,order = {order}) BAR {bar} page offset {pgoff:#x}: {ret:#x}"


@pytest.fixture(params=PROFILES)
def profile(request) -> str:
    return request.param
