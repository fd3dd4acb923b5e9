"""Device profiles: what one emulated GPU looks like, loaded from TOML.

A profile is data (fixtures/profiles/<name>.toml); this module turns it into frozen
dataclasses and rejects anything the device model cannot honour, naming the bad field
in a one-line ProfileError.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hugepfn.abi.sizes import format_size, parse_size
from hugepfn.device.input_limits import InputError, load_toml
from hugepfn.fixtures import PROFILES

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE_SIZE = 4096

BAR_KINDS = ("registers", "memory", "msix")
# Resizable BAR sizes are encoded as 2^(20+n) for n in 0..27 in the capability register.
REBAR_MIN, REBAR_MAX = 1 * MiB, 128 * TiB
MAX_BAR_SIZE = 128 * TiB
REGISTER_BAR_MIN = 64 * KiB          # the register map (docs/device.md) needs 64 KiB
LINK_SPEEDS = {2.5: 1, 5: 2, 8: 3, 16: 4, 32: 5, 64: 6}   # GT/s -> Link Capabilities code
MSIX_MAX_VECTORS = 2048


class ProfileError(ValueError):
    """A profile cannot be loaded; the message names the file and the field in one line."""


@dataclass(frozen=True)
class BarSpec:
    index: int
    kind: str                    # "registers" | "memory" | "msix"
    size: int                    # the BAR window (power of two)
    is_64bit: bool = False
    prefetchable: bool = False
    memory_size: int = 0         # memory BARs: real device memory behind the window (<= size)
    dpa_base: int = 0            # memory BARs: device physical address of offset 0
    resizable_sizes: tuple[int, ...] = ()   # empty: not resizable

    @property
    def resizable(self) -> bool:
        return bool(self.resizable_sizes)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_id: int
    revision: int
    class_code: int
    interrupt_pin: int
    link_speed_code: int
    link_width: int
    bars: tuple[BarSpec, ...]
    msix_vectors: int
    msix_bar: int
    error_vector: int
    error_queue_entries: int
    repair_by_write: bool
    status_registers: tuple[tuple[int, int], ...] = ()    # (BAR0 offset, fixed value)
    source: str = ""

    def bar(self, index: int) -> BarSpec | None:
        for bar in self.bars:
            if bar.index == index:
                return bar
        return None

    @property
    def register_bar(self) -> BarSpec:
        return next(b for b in self.bars if b.kind == "registers")

    @property
    def memory_bars(self) -> tuple[BarSpec, ...]:
        return tuple(b for b in self.bars if b.kind == "memory")


def _size(value: object, where: str) -> int:
    """A size in the one grammar of hugepfn.abi.sizes ('64MiB', '0x1000', 4096), or a
    ProfileError naming the field."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def _size_list(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ProfileError(f"{where}: expected a list of sizes")
    return tuple(_size(v, f"{where}[{i}]") for i, v in enumerate(value))


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class _Reader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, table: dict, where: str):
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: expected a table")
        self.table, self.where, self.used = table, where, set()

    def get(self, key: str, kind: type | tuple, default=None, required=False):
        self.used.add(key)
        if key not in self.table:
            if required:
                raise ProfileError(f"{self.where}.{key}: missing")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ProfileError(f"{self.where}.{key}: expected {kinds[0].__name__}, got {value!r}")
        if not isinstance(value, kinds):
            raise ProfileError(f"{self.where}.{key}: expected {kinds[0].__name__}, got {value!r}")
        return value

    def int_in(self, key: str, lo: int, hi: int, default=None, required=False) -> int:
        value = self.get(key, int, default, required)
        if not lo <= value <= hi:
            raise ProfileError(f"{self.where}.{key}: {value:#x} is outside {lo:#x}..{hi:#x}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ProfileError(f"{self.where}.{unknown[0]}: unknown field")


def resolve_profile_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if "/" in text or text.endswith(".toml"):
        return Path(text)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ProfileError(f"profile {text!r}: not a profile name")
    return PROFILES / f"{text}.toml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a profile by name (fixtures/profiles/<name>.toml) or by path."""
    path = resolve_profile_path(name_or_path)
    try:
        data = load_toml(path, f"profile {str(path)!r}")
    except FileNotFoundError:
        known = ", ".join(available_profiles())
        raise ProfileError(f"profile {str(name_or_path)!r}: no such profile (known: {known})") from None
    except OSError as exc:
        raise ProfileError(f"profile {str(path)!r}: {exc.strerror}") from None
    except InputError as exc:                  # not a regular file, too large, too deep
        raise ProfileError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path.name}: not valid TOML: {exc}") from None
    try:
        return profile_from_dict(data, source=str(path), default_name=path.stem)
    except ProfileError as exc:
        raise ProfileError(f"profile {path.name}: {exc}") from None


def profile_from_dict(data: dict, source: str = "", default_name: str = "profile") -> Profile:
    top = _Reader(data, "profile")
    name = top.get("name", str, default_name)
    description = top.get("description", str, "")

    pci = _Reader(top.get("pci", dict, {}), "pci")
    vendor_id = pci.int_in("vendor_id", 0, 0xFFFE, required=True)
    device_id = pci.int_in("device_id", 0, 0xFFFF, required=True)
    subsystem_vendor_id = pci.int_in("subsystem_vendor_id", 0, 0xFFFF, vendor_id)
    subsystem_id = pci.int_in("subsystem_id", 0, 0xFFFF, 0)
    revision = pci.int_in("revision", 0, 0xFF, 0xA1)
    class_code = pci.int_in("class_code", 0, 0xFFFFFF, 0x030200)
    interrupt_pin = pci.int_in("interrupt_pin", 0, 4, 1)
    speed = pci.get("link_speed_gts", (int, float), 16)
    if speed not in LINK_SPEEDS:
        raise ProfileError(f"pci.link_speed_gts: {speed} is not one of {sorted(LINK_SPEEDS)}")
    link_width = pci.get("link_width", int, 16)
    if link_width not in (1, 2, 4, 8, 12, 16, 32):
        raise ProfileError(f"pci.link_width: {link_width} is not a PCIe link width")
    pci.finish()

    raw_bars = top.get("bar", list, [])
    if not raw_bars:
        raise ProfileError("bar: at least one [[bar]] is required")
    bars = _parse_bars(raw_bars)

    msix = _Reader(top.get("msix", dict, {}), "msix")
    msix_vectors = msix.int_in("vectors", 1, MSIX_MAX_VECTORS, 8)
    error_vector = msix.int_in("error_vector", 0, MSIX_MAX_VECTORS - 1, 0)
    msix.finish()
    if error_vector >= msix_vectors:
        raise ProfileError(f"msix.error_vector: {error_vector} >= msix.vectors {msix_vectors}")

    errors = _Reader(top.get("errors", dict, {}), "errors")
    queue_entries = errors.int_in("queue_entries", 1, 4096, 64)
    repair_by_write = errors.get("repair_by_write", bool, False)
    errors.finish()
    status_registers = _parse_status_registers(top.get("status_register", list, []))
    top.finish()

    kinds = [b.kind for b in bars]
    if kinds.count("registers") != 1:
        raise ProfileError("bar: exactly one bar must have kind = \"registers\"")
    if kinds.count("msix") != 1:
        raise ProfileError("bar: exactly one bar must have kind = \"msix\"")
    msix_bar = next(b for b in bars if b.kind == "msix")
    from hugepfn.device.msix import msix_bar_layout   # local: msix imports profiles' constants
    needed = msix_bar_layout(msix_vectors).bar_size
    if msix_bar.size < needed:
        raise ProfileError(f"bar[{msix_bar.index}].size: {msix_vectors} MSI-X vectors need "
                           f"at least {format_size(needed)}")
    return Profile(name=name, description=description, vendor_id=vendor_id, device_id=device_id,
                   subsystem_vendor_id=subsystem_vendor_id, subsystem_id=subsystem_id,
                   revision=revision, class_code=class_code, interrupt_pin=interrupt_pin,
                   link_speed_code=LINK_SPEEDS[speed], link_width=link_width, bars=bars,
                   msix_vectors=msix_vectors, msix_bar=msix_bar.index, error_vector=error_vector,
                   error_queue_entries=queue_entries, repair_by_write=repair_by_write,
                   status_registers=status_registers, source=source)


def _parse_status_registers(raw: list) -> tuple[tuple[int, int], ...]:
    """[[status_register]] {offset, value}: read-only BAR0 dwords a driver polls before it
    binds (the Grace-Hopper variant driver waits for its C2C-link and HBM-training status to read 0xFF)."""
    out = []
    for i, entry in enumerate(raw):
        r = _Reader(entry, f"status_register[{i}]")
        # above the register map (docs/device.md ends at the error window, 0x1100 + 0x100)
        offset = r.int_in("offset", 0x1200, (1 << 32) - 4, required=True)
        value = r.int_in("value", 0, 0xFFFFFFFF, required=True)
        r.get("name", str, "")
        r.finish()
        if offset % 4:
            raise ProfileError(f"status_register[{i}].offset: {offset:#x} is not dword aligned")
        out.append((offset, value))
    return tuple(out)


def _parse_bars(raw_bars: list) -> tuple[BarSpec, ...]:
    bars: list[BarSpec] = []
    taken: dict[int, str] = {}
    dpa_cursor = 0
    for i, raw in enumerate(raw_bars):
        where = f"bar[{i}]"
        r = _Reader(raw, where)
        index = r.int_in("index", 0, 5, required=True)
        where = f"bar[{index}]"
        r.where = where
        kind = r.get("kind", str, required=True)
        if kind not in BAR_KINDS:
            raise ProfileError(f"{where}.kind: {kind!r} is not one of {', '.join(BAR_KINDS)}")
        size = _size(r.get("size", (int, str), required=True), f"{where}.size")
        if not _is_pow2(size) or size < PAGE_SIZE or size > MAX_BAR_SIZE:
            raise ProfileError(f"{where}.size: {size:#x} must be a power of two from 4KiB to 128TiB")
        bits = r.get("bits", int, 64 if kind == "memory" else 32)
        if bits not in (32, 64):
            raise ProfileError(f"{where}.bits: {bits} must be 32 or 64")
        prefetchable = r.get("prefetchable", bool, kind == "memory")
        if bits == 32 and size > 2 * GiB:
            raise ProfileError(f"{where}.size: a 32-bit BAR cannot exceed 2GiB (set bits = 64)")
        if bits == 64 and index % 2:
            raise ProfileError(f"{where}.bits: a 64-bit BAR must sit at an even index")
        if kind == "registers" and size < REGISTER_BAR_MIN:
            raise ProfileError(f"{where}.size: the register BAR needs at least 64KiB")
        memory_size = size
        dpa_base = 0
        sizes: tuple[int, ...] = ()
        if kind == "memory":
            memory_size = _size(r.get("memory_size", (int, str), size), f"{where}.memory_size")
            if memory_size % PAGE_SIZE or not 0 < memory_size:
                raise ProfileError(f"{where}.memory_size: must be a positive multiple of 4KiB")
            sizes = _size_list(r.get("resizable_sizes", list, []), f"{where}.resizable_sizes")
            if sizes:
                bad = [s for s in sizes if not _is_pow2(s) or not REBAR_MIN <= s <= REBAR_MAX]
                if bad:
                    raise ProfileError(f"{where}.resizable_sizes: {bad[0]:#x} is not a power of two "
                                       "from 1MiB to 128TiB")
                if size not in sizes:
                    raise ProfileError(f"{where}.resizable_sizes: must include the BAR size {format_size(size)}")
                if bits == 32 and max(sizes) > 2 * GiB:
                    raise ProfileError(f"{where}.resizable_sizes: a 32-bit BAR cannot exceed 2GiB")
                sizes = tuple(sorted(set(sizes)))
            elif memory_size > size:
                raise ProfileError(f"{where}.memory_size: {format_size(memory_size)} exceeds the BAR "
                                   f"size {format_size(size)}")
            default_base = dpa_cursor
            dpa_base = r.int_in("dpa_base", 0, (1 << 64) - 1, default_base)
            if dpa_base % PAGE_SIZE:
                raise ProfileError(f"{where}.dpa_base: {dpa_base:#x} is not 4KiB aligned")
            # The next memory BAR's default device physical base: the next 1 GiB boundary.
            dpa_cursor = -(-(dpa_base + memory_size) // GiB) * GiB
        r.finish()
        for slot in (index, index + 1) if bits == 64 else (index,):
            if slot > 5:
                raise ProfileError(f"{where}.bits: a 64-bit BAR at index 5 has no upper half")
            if slot in taken:
                raise ProfileError(f"{where}.index: BAR slot {slot} is already used by {taken[slot]}")
            taken[slot] = where
        bars.append(BarSpec(index=index, kind=kind, size=size, is_64bit=bits == 64,
                            prefetchable=prefetchable, memory_size=memory_size, dpa_base=dpa_base,
                            resizable_sizes=sizes))
    return tuple(sorted(bars, key=lambda b: b.index))
