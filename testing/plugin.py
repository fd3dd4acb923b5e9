"""The hugepfn pytest plugin, registered through the `pytest11` entry point (any suite with
hugepfn installed gets it; `-p hugepfn.testing.plugin` loads it explicitly).

Fixtures (testing/fixtures.py): hugepfn_served_device, hugepfn_host (and their module_ and
session_ scoped forms), hugepfn_monitor, hugepfn_kernel, hugepfn_backend, hugepfn_workdir,
hugepfn_events_dir, hugepfn_netns.  Helpers (import from hugepfn.testing): assert_signal,
assert_no_signal, assert_mapping, run_scenario.  Option: --hugepfn-backend.  Ini keys:
hugepfn_backend, hugepfn_drivers (driver modules; drivers installed through the hugepfn.drivers
entry point need nothing), hugepfn_state_dir.  Marker: hugepfn_kernel("6.19", "7.0").
SIGTERM stops the run as Ctrl-C does (teardown runs: no server or socket directory is left).
See docs/fault-injection.md.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest

from hugepfn.device.vfio_user.backends import CHOICES

from .fixtures import (_hugepfn_module_scope, _hugepfn_scope, _hugepfn_session_scope, configured_backend,
                       hugepfn_backend, hugepfn_events_dir, hugepfn_host, hugepfn_kernel, hugepfn_module_host,
                       hugepfn_module_served_device, hugepfn_monitor, hugepfn_netns, hugepfn_served_device,
                       hugepfn_session_host, hugepfn_session_served_device, hugepfn_workdir, kernel_params)

# how the plugin joins a served device to the host model (printed in the report header)
PIPELINE = "hugepfn.host.attach + hugepfn.host.ghes (MSI-X error vector)"
# pytest registers the fixtures it finds in this module's namespace
__all__ = ["_hugepfn_module_scope", "_hugepfn_scope", "_hugepfn_session_scope", "hugepfn_backend",
           "hugepfn_events_dir", "hugepfn_host", "hugepfn_kernel", "hugepfn_module_host",
           "hugepfn_module_served_device", "hugepfn_monitor", "hugepfn_netns", "hugepfn_served_device",
           "hugepfn_session_host", "hugepfn_session_served_device", "hugepfn_workdir"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hugepfn", "hugepfn fault injection")
    group.addoption("--hugepfn-backend", dest="hugepfn_backend", default=None, choices=CHOICES,
                    help="vfio-user backend for hugepfn_served_device: auto (libvfio-user when "
                         "present, else python), python or libvfio-user (default: the ini key "
                         "hugepfn_backend, else auto)")
    parser.addini("hugepfn_backend", "default vfio-user backend of served devices: auto, python or libvfio-user",
                  default="auto")
    parser.addini("hugepfn_drivers", "driver modules whose HUGEPFN_DRIVERS the hosts of this session may bind "
                                     "(as --driver-module does for hugepfn run), one per line", type="linelist",
                  default=[])
    parser.addini("hugepfn_state_dir", "directory where served devices keep their poison state, one "
                                       "subdirectory per test (emptied when it starts); default: none", default="")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so that pytest stops the same
    way: fixtures are torn down, servers closed, socket directories removed."""


_session_pid: int | None = None


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _session_pid:
        # A fork of the pytest process (pyroute2 forks to create namespaces) that is told
        # to end must end, as it did before: running pytest's teardown in a copy would
        # print a second summary and may wait forever on a lock copied held.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # A second SIGTERM must not cut the teardown short (SIGKILL still ends everything).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("SIGTERM")


def _default_in_forked_children() -> None:
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    from hugepfn.host.drivers import DriverError, load_driver_modules

    backend = configured_backend(config)
    if backend not in CHOICES:
        raise pytest.UsageError(f"hugepfn_backend: unknown backend {backend!r} (choose from {', '.join(CHOICES)})")
    try:
        load_driver_modules(config.getini("hugepfn_drivers"), source="ini key hugepfn_drivers")
    except DriverError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.addinivalue_line(
        "markers", "hugepfn_kernel(*versions): run the test once per kernel profile "
                   "(e.g. 6.1, 6.12, 6.16, 7.3; none named: all); hugepfn_host uses it")
    # Only where nobody else handles SIGTERM (the default would kill the process with no
    # teardown, leaving sockets and their directories behind).
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        global _session_pid
        _session_pid = os.getpid()
        signal.signal(signal.SIGTERM, _on_sigterm)
        config.stash[_SIGTERM_KEY] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_SIGTERM_KEY, False) and signal.getsignal(signal.SIGTERM) in (_on_sigterm, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_SIGTERM_KEY = pytest.StashKey[bool]()
os.register_at_fork(after_in_child=_default_in_forked_children)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("hugepfn_kernel")
    if marker is None or "hugepfn_kernel" not in metafunc.fixturenames:
        return
    try:
        versions = kernel_params(marker)
    except ValueError as exc:
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: hugepfn_kernel: {exc}") from None
    metafunc.parametrize("hugepfn_kernel", versions, indirect=True, ids=[f"kernel-{v}" for v in versions])


def pytest_report_header(config: pytest.Config) -> str:
    from hugepfn.device.vfio_user.backends import BackendUnavailable, select_backend

    requested = configured_backend(config)
    try:
        choice, why = select_backend(requested)
        chosen = f"{choice.name} ({why})"
    except BackendUnavailable as exc:
        chosen = f"none ({exc})"
    return f"hugepfn: backend={chosen}, pipeline: {PIPELINE}"
