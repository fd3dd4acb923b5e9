"""First contact: every bundled profile builds a device that answers the ServedDevice calls."""
from __future__ import annotations

import pytest

from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX
from hugepfn.device.gpu import GpuDevice
from hugepfn.device.interface import ServedDevice
from hugepfn.device.profiles import available_profiles


@pytest.mark.parametrize("name", ["tiny", "gpu-8g", "nvgrace", "gpu-1t", "rebar"])
def test_profile_builds_a_served_device(name):
    assert name in available_profiles()
    with GpuDevice.from_profile(name) as dev:
        served: ServedDevice = dev
        assert served.num_regions >= 9 and served.num_irqs >= 5
        assert served.region_info(VFIO_PCI_CONFIG_REGION_INDEX).size == 4096
        header = served.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4)
        assert header == bytes.fromhex("de10") + dev.profile.device_id.to_bytes(2, "little")
