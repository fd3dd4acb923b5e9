"""The plugin's fixtures.  Everything a test creates lives in per-test directories and is
closed at teardown, so pytest-xdist workers (and repeated runs) never share a socket, an
events directory or a network namespace.  The module- and session-scoped factories do the same
per module / per session (their own directories under pytest's tmp_path_factory)."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from hugepfn.device.vfio_user.backends import BackendUnavailable
from hugepfn.host import kernel as kernel_mod
from hugepfn.host.events.constants import DEFAULT_GROUP, ENV_EVENTS_DIR

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
    """The backend name from --hugepfn-backend (else the ini key hugepfn_backend; auto, python
    or libvfio-user)."""
    return configured_backend(request.config)


@pytest.fixture
def hugepfn_kernel(request) -> str:
    """The kernel profile of this test: a @pytest.mark.hugepfn_kernel(...) parameter, else 7.0."""
    return getattr(request, "param", DEFAULT_KERNEL)


def configured_backend(config) -> str:
    return config.getoption("hugepfn_backend") or config.getini("hugepfn_backend") or "auto"


def _state_root(config) -> Path | None:
    """The ini key hugepfn_state_dir (relative to the rootdir), or None."""
    value = config.getini("hugepfn_state_dir")
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(config.rootpath) / path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-100:]


class _Scope:
    """What the factories of one scope (a test, a module, the session) own and close."""

    def __init__(self, request, workdir: Path, events_dir: Path, kernel: str) -> None:
        self.request = request
        self.workdir = workdir
        self.events_dir = events_dir
        self.kernel = kernel
        self.backend = configured_backend(request.config)
        root = _state_root(request.config)
        self.state_root = None if root is None else root / _safe(request.node.nodeid or "session")
        if self.state_root is not None:
            shutil.rmtree(self.state_root, ignore_errors=True)   # each run starts without old poison
        self.served: list[ServedDevice] = []
        self.hosts: list[Host] = []

    def serve(self, profile: str = "tiny", backend: str | None = None, state_dir=None) -> ServedDevice:
        chosen = backend or self.backend
        name = f"dev{len(self.served)}.sock"
        if state_dir is None and self.state_root is not None:
            state_dir = self.state_root / name.removesuffix(".sock")
        try:
            dev = serve_device(self.workdir, profile, chosen, state_dir=state_dir, name=name)
        except BackendUnavailable as exc:
            if chosen not in ("auto", "python", "libvfio-user"):
                raise
            pytest.skip(str(exc))
        self.served.append(dev)
        return dev

    def host(self, kernel: str | None = None, arch: str = "x86_64", thp: str = "always",
             policy: str = "upstream", sysctl: dict | None = None, profile: str = "tiny",
             backend: str | None = None, driver: str = "vfio-pci", register: bool = True,
             attach: bool = True, events: str | None = None, netns: str | None = None,
             ghes: str = "async") -> Host:
        from hugepfn.host.machine import Machine

        machine = Machine(kernel=kernel or self.kernel, arch=arch, thp=thp, policy=policy, sysctl=sysctl)
        publisher = None
        if events is not None:
            from hugepfn.host.events import publisher as make_publisher
            publisher = make_publisher(events, netns=netns, events_dir=self.events_dir)
        host = Host(machine, publisher=publisher, events=events, events_dir=self.events_dir, netns=netns)
        self.hosts.append(host)
        if attach:
            host.attach(self.serve(profile, backend), driver=driver, register=register, ghes=ghes)
        return host

    def close(self) -> None:
        for host in reversed(self.hosts):
            host.close()
        for dev in reversed(self.served):
            dev.close()


def _scoped_dirs(tmp_path_factory, name: str) -> tuple[Path, Path, bool]:
    path, temporary = short_dir(tmp_path_factory.mktemp(name, numbered=True))
    return Path(path), Path(path) / "events", temporary


@contextlib.contextmanager
def _scope(request, tmp_path_factory, name: str):
    workdir, events_dir, temporary = _scoped_dirs(tmp_path_factory, name)
    scope = _Scope(request, workdir, events_dir, DEFAULT_KERNEL)
    try:
        yield scope
    finally:
        scope.close()
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def _hugepfn_scope(request, hugepfn_workdir: Path, hugepfn_events_dir: Path, hugepfn_kernel: str):
    scope = _Scope(request, hugepfn_workdir, hugepfn_events_dir, hugepfn_kernel)
    yield scope
    scope.close()


@pytest.fixture(scope="module")
def _hugepfn_module_scope(request, tmp_path_factory):
    with _scope(request, tmp_path_factory, "hugepfn-module") as scope:
        yield scope


@pytest.fixture(scope="session")
def _hugepfn_session_scope(request, tmp_path_factory):
    with _scope(request, tmp_path_factory, "hugepfn-session") as scope:
        yield scope


@pytest.fixture
def hugepfn_served_device(_hugepfn_scope):
    """Factory: ``hugepfn_served_device(profile="tiny", backend=None, state_dir=None)`` starts a
    device server on a socket in this test's directory and returns a ServedDevice
    (.device, .socket_path, .backend_name, .backend_reason, .close()).  ``backend`` None
    uses --hugepfn-backend.  A backend that cannot run here skips the test with the reason."""
    return _hugepfn_scope.serve


@pytest.fixture(scope="module")
def hugepfn_module_served_device(_hugepfn_module_scope):
    """hugepfn_served_device for a whole test module: devices live until the module's last test."""
    return _hugepfn_module_scope.serve


@pytest.fixture(scope="session")
def hugepfn_session_served_device(_hugepfn_session_scope):
    """hugepfn_served_device for the whole session."""
    return _hugepfn_session_scope.serve


@pytest.fixture
def hugepfn_host(_hugepfn_scope):
    """Factory: ``hugepfn_host(kernel=None, arch="x86_64", thp="always", policy="upstream",
    sysctl=None, profile="tiny", backend=None, driver="vfio-pci", register=True, attach=True,
    events=None, netns=None, ghes="async")`` -> Host with a served device attached as "gpu".

    ``kernel`` None takes the test's hugepfn_kernel.  ``attach=False`` gives a bare host
    (call host.attach(served) yourself).  ``events="unix"`` publishes memory-failure events
    to this test's events directory; ``events="netlink"`` to NETLINK_USERSOCK inside
    ``netns`` (a hugepfn_netns name).  Everything is closed at teardown."""
    return _hugepfn_scope.host


@pytest.fixture(scope="module")
def hugepfn_module_host(_hugepfn_module_scope):
    """hugepfn_host for a whole test module (kernel None: 7.0; events in the module's own
    directory): one host, and its devices, shared by the module's tests."""
    return _hugepfn_module_scope.host


@pytest.fixture(scope="session")
def hugepfn_session_host(_hugepfn_session_scope):
    """hugepfn_host for the whole session."""
    return _hugepfn_session_scope.host


@pytest.fixture
def hugepfn_monitor(hugepfn_events_dir: Path):
    """Factory: ``hugepfn_monitor(transport="auto", netns=None, group=27)`` -> a listening
    hugepfn.host.events.monitor.Monitor, the listener `hugepfn monitor` uses, on this test's
    events directory (``.status``, ``.receive(timeout)``, ``.collect(count, timeout)``,
    ``.events``, ``.lines`` and ``.json_lines`` as the command prints them).  Closed at teardown."""
    from hugepfn.host.events.monitor import Monitor

    monitors: list[Monitor] = []

    def factory(transport: str = "auto", netns: str | None = None, group: int = DEFAULT_GROUP) -> Monitor:
        monitor = Monitor(transport, group=group, netns=netns, events_dir=hugepfn_events_dir)
        monitors.append(monitor)
        return monitor

    yield factory
    for monitor in monitors:
        monitor.close()


def kernel_params(marker) -> list[str]:
    """The kernel profiles a hugepfn_kernel marker names (all of them when it names none)."""
    versions = list(marker.args) or list(kernel_mod.PROFILES)
    for version in versions:
        kernel_mod.profile(version)          # ValueError naming the choices
    return versions
