"""A served device (the real GpuDevice behind the python vfio-user server and its control
server, on sockets in tmp_path) and a host Machine that attaches to it over vfio-user."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from hugepfn.device.control import ControlClient, ControlServer, control_path
from hugepfn.device.gpu import GpuDevice
from hugepfn.device.vfio_user.backend_python import Server
from hugepfn.host.attach import attach_vfio_user
from hugepfn.host.machine import Machine
from hugepfn.host.memory_failure.callbacks import region_space
from hugepfn.host.vfio_user.client import VfioUserClient

VA = 0x7F0000000000


@dataclass
class Served:
    device: GpuDevice
    server: Server
    control_server: ControlServer
    socket: str

    def control(self) -> ControlClient:
        return ControlClient(control_path(self.socket))


@dataclass
class Host:
    machine: Machine
    client: VfioUserClient
    dev: object                  # the host's VfioPciCoreDevice
    placements: dict

    def bar_pfn(self, bar: int, offset: int = 0) -> int:
        return (self.placements[bar].address + offset) >> 12

    def register(self, region: int = 2) -> None:
        assert self.machine.register_pfn_address_space(region_space(self.dev, region)) == 0

    def mmap(self, pid: int = 4242, region: int = 2, length: int = 64 << 20, addr: int = VA) -> None:
        assert self.machine.mmap(pid, "gpu", region, 0, length, addr) == 0


@pytest.fixture
def serve(tmp_path):
    """serve(profile="tiny") -> Served; everything is stopped at the end of the test."""
    made = []

    def start(profile: str = "tiny") -> Served:
        device = GpuDevice.from_profile(profile)
        sock = str(tmp_path / f"{profile}-{len(made)}.sock")
        server = Server(device, sock).start()
        control = ControlServer(device, control_path(sock), server=server).start()
        served = Served(device, server, control, sock)
        made.append(served)
        return served

    yield start
    for s in made:
        s.control_server.close()
        s.server.close()
        s.device.close()


@pytest.fixture
def attach():
    """attach(served, kernel="7.0", early_kill=0, policy="upstream") -> Host with process qemu
    (pid 4242, threads 4242/4243) and the device bound as "gpu"."""
    clients = []

    def make(served: Served, kernel: str = "7.0", early_kill: int = 0, policy: str = "upstream") -> Host:
        machine = Machine(kernel=kernel, policy=policy, sysctl={"vm.memory_failure_early_kill": early_kill})
        machine.create_process(4242, "qemu", [4242, 4243])
        client = VfioUserClient.attach(served.socket)
        clients.append(client)
        dev, placements = attach_vfio_user(machine, "gpu", client)
        return Host(machine, client, dev, placements)

    yield make
    for c in clients:
        c.close()
