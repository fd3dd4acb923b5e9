"""Profiles load from fixtures/ and bad ones are rejected with a one-line message naming the field."""
from __future__ import annotations

import copy
import tomllib

import pytest

from hugepfn.abi.sizes import format_size, parse_size
from hugepfn.device.profiles import GiB, MiB, ProfileError, load_profile, profile_from_dict
from hugepfn.fixtures import PROFILES


def test_bundled_profiles():
    tiny = load_profile("tiny")
    assert (tiny.vendor_id, tiny.class_code, tiny.msix_vectors, tiny.error_vector) == (0x10DE, 0x030200, 8, 1)
    assert [(b.index, b.kind, b.size) for b in tiny.bars] == [(0, "registers", 64 << 10),
                                                             (2, "memory", 64 * MiB), (4, "msix", 16 << 10)]
    g8 = load_profile("gpu-8g")
    assert g8.bar(2).size == 8 * GiB and g8.bar(2).is_64bit and g8.bar(2).prefetchable
    assert g8.bar(0).size == 16 * MiB
    nv = load_profile("nvgrace")
    assert nv.bar(2).size == 128 * GiB and nv.bar(2).memory_size == 96 * GiB + 6 * MiB
    assert nv.bar(2).dpa_base == 0x4000_0000_0000
    assert load_profile("gpu-1t").bar(2).size == 1 << 40
    rb = load_profile("rebar")
    assert rb.bar(2).resizable and rb.repair_by_write and rb.bar(2).memory_size == 16 * GiB


def test_load_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text((PROFILES / "tiny.toml").read_text().replace('name = "tiny"', 'name = "mine"'))
    assert load_profile(path).name == "mine"
    assert load_profile(str(path)).source == str(path)


def test_sizes():
    assert parse_size("64KiB") == 65536 and parse_size("8G") == 8 * GiB
    assert parse_size(4096) == 4096 and parse_size("1 TiB") == 1 << 40
    assert format_size(96 * GiB + 6 * MiB) == "98310MiB" and format_size(8 * GiB) == "8GiB"


def base() -> dict:
    return tomllib.loads((PROFILES / "tiny.toml").read_text())


def edit(path, value):
    data = base()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    (("pci", "vendor_id"), DELETE, "pci.vendor_id: missing"),
    (("pci", "vendor_id"), 0xFFFF, "pci.vendor_id: 0xffff is outside"),
    (("pci", "device_id"), "0x10", "pci.device_id: expected int"),
    (("pci", "colour"), "blue", "pci.colour: unknown field"),
    (("pci", "link_speed_gts"), 7, "pci.link_speed_gts: 7 is not one of"),
    (("pci", "link_width"), 3, "pci.link_width: 3 is not a PCIe link width"),
    (("msix", "vectors"), 0, "msix.vectors: 0x0 is outside"),
    (("msix", "error_vector"), 8, "msix.error_vector: 8 >= msix.vectors 8"),
    (("errors", "repair_by_write"), "yes", "errors.repair_by_write: expected bool"),
    (("bar", 1, "size"), "64MiX", "bar[2].size: expected a size such as 4K, 0x1000, 8GiB or 1_000, got '64MiX'"),
    (("bar", 1, "size"), "96MiB", "bar[2].size: 0x6000000 must be a power of two"),
    (("bar", 1, "size"), "256TiB", "bar[2].size: 0x1000000000000 must be a power of two"),
    (("bar", 1, "memory_size"), "128MiB", "bar[2].memory_size: 128MiB exceeds the BAR size 64MiB"),
    (("bar", 1, "memory_size"), 1000, "bar[2].memory_size: must be a positive multiple of 4KiB"),
    (("bar", 1, "kind"), "vram", "bar[2].kind: 'vram' is not one of"),
    (("bar", 1, "bits"), 48, "bar[2].bits: 48 must be 32 or 64"),
    (("bar", 1, "index"), 6, "bar[1].index: 0x6 is outside"),
    (("bar", 1, "index"), 5, "bar[5].bits: a 64-bit BAR must sit at an even index"),
    (("bar", 1, "index"), 4, "bar[4].index: BAR slot 4 is already used"),
    (("bar", 1, "dpa_base"), 0x123, "bar[2].dpa_base: 0x123 is not 4KiB aligned"),
    (("bar", 1, "resizable_sizes"), ["1GiB"], "bar[2].resizable_sizes: must include the BAR size 64MiB"),
    (("bar", 1, "resizable_sizes"), ["64MiB", "3MiB"], "bar[2].resizable_sizes: 0x300000 is not a power of two"),
    (("bar", 0, "size"), "16KiB", "bar[0].size: the register BAR needs at least 64KiB"),
    (("bar", 2, "size"), "4KiB", "bar[4].size: 8 MSI-X vectors need at least 8KiB"),
    (("bar", 2, "kind"), "memory", "bar: exactly one bar must have kind = \"msix\""),
    (("bar",), [], "bar: at least one [[bar]] is required"),
    (("surprise",), 1, "profile.surprise: unknown field"),
])
def test_bad_profile_names_the_field(path, value, message):
    with pytest.raises(ProfileError) as exc:
        profile_from_dict(edit(path, value))
    text = str(exc.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_32bit_bar_over_2g_is_rejected():
    data = base()
    data["bar"][1].update(bits=32, size="4GiB")
    with pytest.raises(ProfileError, match=r"^bar\[2\].size: a 32-bit BAR cannot exceed 2GiB"):
        profile_from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ProfileError, match=r"^profile bad.toml: not valid TOML"):
        load_profile(bad)
    data = (PROFILES / "tiny.toml").read_text().replace("vectors = 8", "vectors = -1")
    bad.write_text(data)
    with pytest.raises(ProfileError, match=r"^profile bad.toml: msix.vectors: -0x1 is outside"):
        load_profile(bad)
    with pytest.raises(ProfileError, match=r"^profile 'nope': no such profile \(known: .*tiny"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not a profile name"):
        load_profile("..")


def test_default_dpa_bases_follow_each_other():
    data = base()
    data["bar"][2]["index"] = 5
    data["bar"][2]["bits"] = 32
    data["bar"].append(dict(index=4, kind="memory", size="32MiB", bits=32))
    data["bar"][1]["memory_size"] = "48MiB"
    # BAR2 at dpa 0 (48 MiB), BAR4 at the next 1 GiB boundary
    prof = profile_from_dict(copy.deepcopy(data))
    assert prof.bar(2).dpa_base == 0 and prof.bar(4).dpa_base == GiB
