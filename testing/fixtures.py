"""The plugin's fixtures.  Everything a test creates lives in per-test directories and is
closed at teardown, so pytest-xdist workers (and repeated runs) never share a socket, an
events directory or a network namespace."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from hugepfn.device.vfio_user.backends import BackendUnavailable
from hugepfn.host import kernel as kernel_mod
from hugepfn.host.events.constants import ENV_EVENTS_DIR

from .host import Host
from .served import ServedDevice, serve_device, short_dir

DEFAULT_KERNEL = "7.3"


@pytest.fixture
def hugepfn_workdir(tmp_path: Path):
    """A per-test directory short enough for unix socket paths (108 bytes)."""
    path, temporary = short_dir(tmp_path)
    yield Path(path)
    if temporary:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hugepfn_events_dir(hugepfn_workdir: Path, monkeypatch) -> Path:
    """This test's own unix-fallback events directory, also exported as HUGEPFN_EVENTS_DIR
    (so a `hugepfn monitor` or publisher started by the test uses it)."""
    path = hugepfn_workdir / "events"
    monkeypatch.setenv(ENV_EVENTS_DIR, str(path))
    return path


@pytest.fixture
def hugepfn_netns():
    """A private network namespace (root only; skipped otherwise), removed at teardown."""
    if os.geteuid() != 0:
        pytest.skip("a private network namespace needs root")
    from pyroute2 import netns

    name = f"hpfn-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def hugepfn_backend(request) -> str:
    """The backend name from --hugepfn-backend (auto, python or libvfio-user)."""
    return request.config.getoption("hugepfn_backend")


@pytest.fixture
def hugepfn_kernel(request) -> str:
    """The kernel profile of this test: a @pytest.mark.hugepfn_kernel(...) parameter, else 7.0."""
    return getattr(request, "param", DEFAULT_KERNEL)


@pytest.fixture
def hugepfn_served_device(hugepfn_workdir: Path, hugepfn_backend: str):
    """Factory: ``hugepfn_served_device(profile="tiny", backend=None, state_dir=None)`` starts a
    device server on a socket in this test's directory and returns a ServedDevice
    (.device, .socket_path, .backend_name, .backend_reason, .close()).  ``backend`` None
    uses --hugepfn-backend.  A backend that cannot run here skips the test with the reason."""
    served: list[ServedDevice] = []

    def factory(profile: str = "tiny", backend: str | None = None, state_dir=None) -> ServedDevice:
        chosen = backend or hugepfn_backend
        try:
            dev = serve_device(hugepfn_workdir, profile, chosen, state_dir=state_dir,
                               name=f"dev{len(served)}.sock")
        except BackendUnavailable as exc:
            if chosen not in ("auto", "python", "libvfio-user"):
                raise
            pytest.skip(str(exc))
        served.append(dev)
        return dev

    yield factory
    for dev in reversed(served):
        dev.close()


@pytest.fixture
def hugepfn_host(hugepfn_served_device, hugepfn_kernel: str, hugepfn_events_dir: Path):
    """Factory: ``hugepfn_host(kernel=None, arch="x86_64", thp="always", policy="upstream",
    sysctl=None, profile="tiny", backend=None, driver="vfio-pci", register=True, attach=True,
    events=None, netns=None, ghes="async")`` -> Host with a served device attached as "gpu".

    ``kernel`` None takes the test's hugepfn_kernel.  ``attach=False`` gives a bare host
    (call host.attach(served) yourself).  ``events="unix"`` publishes memory-failure events
    to this test's events directory; ``events="netlink"`` to NETLINK_USERSOCK inside
    ``netns`` (a hugepfn_netns name).  Everything is closed at teardown."""
    from hugepfn.host.machine import Machine

    hosts: list[Host] = []

    def factory(kernel: str | None = None, arch: str = "x86_64", thp: str = "always",
                policy: str = "upstream", sysctl: dict | None = None, profile: str = "tiny",
                backend: str | None = None, driver: str = "vfio-pci", register: bool = True,
                attach: bool = True, events: str | None = None, netns: str | None = None,
                ghes: str = "async") -> Host:
        machine = Machine(kernel=kernel or hugepfn_kernel, arch=arch, thp=thp, policy=policy, sysctl=sysctl)
        publisher = None
        if events is not None:
            from hugepfn.host.events import publisher as make_publisher
            publisher = make_publisher(events, netns=netns, events_dir=hugepfn_events_dir)
        host = Host(machine, publisher=publisher, events=events, events_dir=hugepfn_events_dir, netns=netns)
        hosts.append(host)
        if attach:
            host.attach(hugepfn_served_device(profile, backend), driver=driver, register=register, ghes=ghes)
        return host

    yield factory
    for host in reversed(hosts):
        host.close()


def kernel_params(marker) -> list[str]:
    """The kernel profiles a hugepfn_kernel marker names (all of them when it names none)."""
    versions = list(marker.args) or list(kernel_mod.PROFILES)
    for version in versions:
        kernel_mod.profile(version)          # ValueError naming the choices
    return versions
