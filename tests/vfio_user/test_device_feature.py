"""DEVICE_FEATURE: no migration or dirty logging is offered; requests fail cleanly."""
from __future__ import annotations

import errno

import pytest

from hugepfn.device.vfio_user import wire

from .helpers import Command, error_of, still_answers


@pytest.mark.parametrize("feature,op", [
    (wire.FEATURE_MIGRATION, wire.DEVICE_FEATURE_PROBE | wire.DEVICE_FEATURE_GET),
    (wire.FEATURE_MIG_DEVICE_STATE, wire.DEVICE_FEATURE_GET),
    (wire.FEATURE_DMA_LOGGING_START, wire.DEVICE_FEATURE_SET),
])
def test_unsupported_features_are_refused(raw, feature, op):
    payload = wire.DeviceFeature.build({"argsz": 16, "flags": feature | op, "data": bytes(8)})
    assert error_of(raw, Command.DEVICE_FEATURE, payload) in (errno.ENOTSUP, errno.EINVAL)
    still_answers(raw)


def test_python_engine_says_enotsup_for_a_well_formed_probe(raw, backend):
    if backend != "python":
        pytest.skip("errno of the python engine")
    payload = wire.DeviceFeature.build({"argsz": 8, "flags": wire.FEATURE_MIGRATION | wire.DEVICE_FEATURE_PROBE,
                                        "data": b""})
    assert error_of(raw, Command.DEVICE_FEATURE, payload) == errno.ENOTSUP
    assert error_of(raw, Command.DEVICE_FEATURE, b"\0\0\0") == errno.EINVAL
