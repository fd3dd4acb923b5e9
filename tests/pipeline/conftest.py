"""A served device (the real GpuDevice behind the python vfio-user server and its control
server, on sockets in tmp_path) and a host Machine that attaches to it over vfio-user."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from hugepfn.device.serving import Serving, serve as start_serving
from hugepfn.host.attach import BoundDevice, bind_served
from hugepfn.host.machine import Machine
from hugepfn.host.vfio_user.client import VfioUserClient

VA = 0x7F0000000000


@dataclass
class Host:
    machine: Machine
    client: VfioUserClient
    dev: object                  # the host's VfioPciCoreDevice
    placements: dict

    def bar_pfn(self, bar: int, offset: int = 0) -> int:
        return (self.placements[bar].address + offset) >> 12

    def register(self, region: int = 2) -> None:
        assert self.machine.register_pfn_address_space(self.dev.pfn_address_space(region)) == 0

    def mmap(self, pid: int = 4242, region: int = 2, length: int = 64 << 20, addr: int = VA) -> None:
        assert self.machine.mmap(pid, "gpu", region, 0, length, addr) == 0


@pytest.fixture
def serve(tmp_path):
    """serve(profile="tiny") -> Serving (the python backend, with its control server); everything
    is stopped at the end of the test."""
    made: list[Serving] = []

    def start(profile: str = "tiny") -> Serving:
        made.append(start_serving(profile, tmp_path / f"{profile}-{len(made)}.sock", "python"))
        return made[-1]

    yield start
    for s in made:
        s.close()


@pytest.fixture
def attach():
    """attach(served, kernel="7.0", early_kill=0, policy="upstream") -> Host with process qemu
    (pid 4242, threads 4242/4243) and the device bound as "gpu" (its poison model not watched:
    these tests look at the error records the host reads)."""
    bound: list[BoundDevice] = []

    def make(served: Serving, kernel: str = "7.0", early_kill: int = 0, policy: str = "upstream") -> Host:
        machine = Machine(kernel=kernel, policy=policy, sysctl={"vm.memory_failure_early_kill": early_kill})
        machine.create_process(4242, "qemu", [4242, 4243])
        bound.append(bind_served(machine, "gpu", served.socket_path))
        return Host(machine, bound[-1].client, bound[-1].host_device, bound[-1].placements)

    yield make
    for b in bound:
        b.close()
