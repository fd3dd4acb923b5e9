"""DEVICE_FEATURE: no migration or dirty logging is offered; requests fail cleanly."""
from __future__ import annotations

import errno

import pytest

from hugepfn.abi import vfio_user as wire

from .helpers import Command, error_of, still_answers


@pytest.mark.parametrize("feature,op", [
    (wire.FEATURE_MIGRATION, wire.DEVICE_FEATURE_PROBE | wire.DEVICE_FEATURE_GET),
    (wire.FEATURE_MIG_DEVICE_STATE, wire.DEVICE_FEATURE_GET),
    (wire.FEATURE_DMA_LOGGING_START, wire.DEVICE_FEATURE_SET),
])
def test_unsupported_features_are_refused(raw, feature, op):
    payload = wire.DeviceFeature.build({"argsz": 16, "flags": feature | op, "data": bytes(8)})
    assert error_of(raw, Command.DEVICE_FEATURE, payload) == errno.EINVAL
    still_answers(raw)


def test_every_feature_is_refused_with_einval_as_libvfio_user_without_migration(raw):
    for flags in (wire.FEATURE_MIGRATION | wire.DEVICE_FEATURE_PROBE, wire.FEATURE_MIGRATION | wire.DEVICE_FEATURE_GET,
                  wire.FEATURE_DMA_LOGGING_REPORT | wire.DEVICE_FEATURE_GET):
        payload = wire.DeviceFeature.build({"argsz": 4096, "flags": flags, "data": b""})
        assert error_of(raw, Command.DEVICE_FEATURE, payload) == errno.EINVAL
    assert error_of(raw, Command.DEVICE_FEATURE, b"\0\0\0") == errno.EINVAL
    still_answers(raw)
