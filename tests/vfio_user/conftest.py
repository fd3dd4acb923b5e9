"""Shared harness: a live vfio-user server on a real socket in tmp_path, per backend,
serving the real GpuDevice (profile ``tiny``).

``backend`` is parametrized over every backend the project knows; one that cannot
run here is skipped with its one-line reason (e.g. libvfio-user not installed).
"""
from __future__ import annotations

import os

import pytest

from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient

from .device_facts import DeviceFacts


def _backend_params():
    params = []
    for name, choice in backends.available_backends().items():
        marks = () if choice.available else (pytest.mark.skip(reason=f"{name}: {choice.reason}"),)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request) -> str:
    return request.param


@pytest.fixture
def device(tmp_path):
    """The real emulated GPU (profile ``tiny``), state kept in tmp_path."""
    from hugepfn.device.gpu import GpuDevice
    dev = GpuDevice.from_profile("tiny", state_dir=tmp_path / "state")
    yield dev
    dev.close()


@pytest.fixture
def facts(device) -> DeviceFacts:
    return DeviceFacts.of(device)


@pytest.fixture
def socket_path(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path / "vfio-user.sock"


@pytest.fixture
def server(backend, device, socket_path):
    choice, _ = backends.select_backend(backend)
    srv = choice.Server(device, socket_path)
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def client(server, socket_path):
    c = VfioUserClient.attach(socket_path)
    yield c
    c.close()


@pytest.fixture
def raw(server, socket_path):
    """A negotiated client used to send hand-made messages."""
    c = VfioUserClient.connect(socket_path)
    c.negotiate()
    yield c
    c.close()
