"""Backend selection: auto prefers libvfio-user, absent modules/libraries are reasons, not crashes."""
from __future__ import annotations

import pytest

from hugepfn.device.vfio_user import backends


def test_every_backend_reports_availability_with_a_reason():
    found = backends.available_backends()
    assert set(found) == {"python", "libvfio-user"}
    assert found["python"].available and found["python"].reason
    assert found["libvfio-user"].reason           # whichever way it went, it says why


def test_python_backend_is_always_available_and_exposes_the_interface():
    choice, why = backends.select_backend("python")
    assert choice.name == "python" and why.startswith("requested: python (")
    assert choice.Server.backend_name == "python"
    for method in ("start", "serve_forever", "close"):
        assert callable(getattr(choice.Server, method))


def test_auto_prefers_libvfio_user_and_falls_back_to_python(monkeypatch):
    lib_ok = backends.available_backends()["libvfio-user"].available
    choice, why = backends.select_backend("auto")
    assert choice.name == ("libvfio-user" if lib_ok else "python") and why.startswith("auto: ")
    monkeypatch.setitem(backends.BACKEND_MODULES, "libvfio-user", "hugepfn.device.vfio_user.no_such_module")
    choice, why = backends.select_backend("auto")
    assert choice.name == "python"
    assert "libvfio-user unavailable: module not importable" in why


def test_asking_for_an_unavailable_or_unknown_backend_is_a_value_error(monkeypatch):
    monkeypatch.setitem(backends.BACKEND_MODULES, "libvfio-user", "hugepfn.device.vfio_user.no_such_module")
    with pytest.raises(ValueError, match="backend libvfio-user is not available: module not importable"):
        backends.select_backend("libvfio-user")
    with pytest.raises(ValueError, match="unknown backend 'qemu'"):
        backends.select_backend("qemu")


def test_a_probe_that_raises_makes_the_backend_unavailable(monkeypatch):
    module = backends._probe("python").module
    monkeypatch.setattr(module, "is_available", lambda: 1 / 0)
    choice = backends._probe("python")
    assert not choice.available and choice.reason.startswith("availability probe failed: division by zero")
