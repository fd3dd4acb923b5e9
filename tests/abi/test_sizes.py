"""The one size grammar: what it takes, what it refuses and that profiles, scenarios, the control
socket and `hugepfn inject` all read a size through it (the same words for the same mistake)."""
from __future__ import annotations

import copy
import tomllib

import pytest

from hugepfn.abi.sizes import format_size, parse_size
from hugepfn.device.control import ControlError, _number
from hugepfn.device.profiles import ProfileError, profile_from_dict
from hugepfn.fixtures import PROFILES
from hugepfn.host.scenario.errors import ScenarioError
from hugepfn.host.scenario.fields import Field

REFUSED = "expected a size such as 4K, 0x1000, 8GiB or 1_000, got "


@pytest.mark.parametrize("text, size", [
    ("4K", 4096), ("4k", 4096), ("4KiB", 4096), ("4KB", 4096), ("0x1000", 4096), ("0X1000", 4096),
    ("8GiB", 8 << 30), ("1_000", 1000), ("4_096", 4096), ("0x4000_0000", 1 << 30), ("1 TiB", 1 << 40),
    ("2M", 2 << 20), ("1E", 1 << 60), ("0o755", 0o755), ("0b101", 5), ("512B", 512), (" 64MiB ", 64 << 20),
    ("0x1B", 27),                        # a hex digit, not a unit
    (0, 0), (4096, 4096),
])
def test_sizes_it_takes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("value", ["", "zz", "4Q", "1__0", "_1", "0x", "0x_", "4 K B", "-4K", "1.5G", "4KiBB",
                                   True, 1.5, None, [4096]])
def test_sizes_it_refuses_in_one_line(value):
    with pytest.raises(ValueError) as exc:
        parse_size(value)
    assert str(exc.value) == f"{REFUSED}{value!r}"


def test_negative_and_limit():
    with pytest.raises(ValueError, match=r"^must not be negative, got -1$"):
        parse_size(-1)
    assert parse_size((1 << 64) - 1, limit=1 << 64) == (1 << 64) - 1
    with pytest.raises(ValueError, match=r"^must be below 0x10000000000000000, got '16E'$"):
        parse_size("16E", limit=1 << 64)


def test_format_size_uses_the_largest_whole_binary_unit():
    assert [format_size(n) for n in (512, 4096, 2 << 20, (96 << 30) + (6 << 20), 8 << 30, 1 << 40)] == \
        ["512B", "4KiB", "2MiB", "98310MiB", "8GiB", "1TiB"]


def _profile_with_bar_size(value):
    data = tomllib.loads((PROFILES / "tiny.toml").read_text())
    data = copy.deepcopy(data)
    data["bar"][1]["size"] = value
    return profile_from_dict(data, "tiny.toml")


@pytest.mark.parametrize("text", ["0x4000000", "64MiB", "65_536K", "0o400000000"])
def test_every_reader_takes_the_same_sizes(text):
    expected = 64 << 20
    assert _profile_with_bar_size(text).bar(2).size == expected
    assert Field("addr").convert(text, "step 1 (access)") == expected
    assert _number({"offset": text}, "offset") == expected


def test_every_reader_refuses_with_the_same_words():
    with pytest.raises(ProfileError) as profile:
        _profile_with_bar_size("64MiX")
    with pytest.raises(ScenarioError) as scenario:
        Field("addr").convert("64MiX", "step 1 (access)")
    with pytest.raises(ControlError) as control:
        _number({"offset": "64MiX"}, "offset")
    assert str(profile.value) == f"bar[2].size: {REFUSED}'64MiX'"
    assert str(scenario.value) == f"step 1 (access): addr: {REFUSED}'64MiX'"
    assert str(control.value) == f"offset: {REFUSED}'64MiX'"
