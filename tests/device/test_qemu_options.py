"""The QEMU options worked out from a profile (make e2e boots guests with them: docs/qemu.md)."""
from __future__ import annotations

import json
import shlex

import pytest

from hugepfn.device import qemu_options
from hugepfn.device.profiles import GiB, TiB, BarSpec, load_profile


@pytest.mark.parametrize("profile, bits", [("tiny", 40), ("gpu-8g", 40), ("nvgrace", 40), ("gpu-1t", 41)])
def test_phys_bits_of_the_bundled_profiles(profile, bits):
    assert qemu_options.phys_bits_needed(load_profile(profile).bars) == bits
    assert qemu_options.cpu_option(load_profile(profile)) == f"max,phys-bits={bits}"


def test_phys_bits_hold_the_64_bit_bars_in_the_top_half():
    def bar(index, size, is_64bit=True):
        return BarSpec(index, "memory", size, is_64bit=is_64bit)
    assert qemu_options.phys_bits_needed([bar(0, 4 * TiB)]) == 43            # window 4 TiB -> 2**43
    assert qemu_options.phys_bits_needed([bar(0, 1 * TiB), bar(2, 16 << 20)]) == 42   # 1 TiB + 16 MiB -> 2 TiB
    assert qemu_options.phys_bits_needed([bar(0, 1 * TiB, is_64bit=False)]) == 40     # 32-bit BARs do not count
    assert qemu_options.phys_bits_needed([bar(0, 256 * GiB)]) == 40                   # TCG's 40 already hold it


def test_device_line_is_qemu_json_syntax_quoted_for_the_shell():
    arg = qemu_options.device_argument("/run/user/1000/hugepfn/gpu0.sock")
    assert arg == ('-device \'{"driver":"vfio-user-pci","socket":{"path":"/run/user/1000/hugepfn/gpu0.sock",'
                   '"type":"unix"}}\'')
    option, value = shlex.split(arg)
    assert option == "-device" and json.loads(value)["socket"]["type"] == "unix"
    assert json.loads(qemu_options.device_json("@hugepfn0"))["socket"] == {"path": "hugepfn0", "type": "unix",
                                                                           "abstract": True}
