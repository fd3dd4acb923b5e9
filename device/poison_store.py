"""The poison list on disk: one file next to the device state, replaced atomically.

Format 2 (little-endian), declared with construct as ``PoisonFile``:

    magic "HPFNPOIS" | u32 version=2 | u32 identity_size | u64 generation | u64 count
    identity_size bytes: the device the list belongs to, as UTF-8 JSON (DeviceIdentity)
    count x { u32 bar | u32 reserved=0 | u64 start | u64 end }     (merged, sorted per BAR)
    u32 crc32 of every byte before it

The identity (profile name, PCI ids, BAR layout) is what keeps one device's poison from
being loaded by another: offsets only mean something for the BARs they were written
for, and a list that merely fits another profile would put the poison at other device
addresses.  A mismatch is refused with one line naming both devices; nothing is remapped.

Saving writes ``<file>.tmp``, fsyncs it, renames it over the file and fsyncs the
directory, so a crash leaves either the old or the new list.  Loading reads at most
MAX_FILE_BYTES of a regular file and checks the size, the magic, the version, the CRC
and the identity; any mismatch raises PoisonFileError, never an empty list.  The
struct path below does the bulk work; tests check it agrees with construct.

``HUGEPFN_POISON_CRASH_AT`` (tests only) SIGKILLs the process at one point of a save:
``mid-write`` (half of the temp file written), ``before-rename``, ``after-rename``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from construct import Array, Bytes, Const, Int32ul, Int64ul, Struct, this

from hugepfn.abi.sizes import format_size
from hugepfn.device.input_limits import InputError, read_regular_file
from hugepfn.device.profiles import Profile

MAGIC = b"HPFNPOIS"
VERSION = 2
CRASH_ENV = "HUGEPFN_POISON_CRASH_AT"
MAX_IDENTITY_BYTES = 64 << 10
MAX_FILE_BYTES = 1 << 30       # ~44 million ranges; a larger file is refused, never read whole

PoisonEntry = Struct(
    "bar" / Int32ul,
    "reserved" / Const(0, Int32ul),
    "start" / Int64ul,
    "end" / Int64ul,
)
PoisonFile = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int32ul),
    "identity_size" / Int32ul,
    "generation" / Int64ul,
    "count" / Int64ul,
    "identity" / Bytes(this.identity_size),
    "entries" / Array(this.count, PoisonEntry),
    "crc32" / Int32ul,
)
_HEADER = struct.Struct("<8sIIQQ")
_ENTRY = struct.Struct("<IIQQ")
_CRC = struct.Struct("<I")


class PoisonFileError(ValueError):
    """The poison file exists but cannot be trusted (torn, truncated, corrupt, another device's)."""


@dataclass(frozen=True)
class DeviceIdentity:
    """Which device a poison list belongs to: what its offsets are relative to."""
    profile: str
    pci: str                                  # vendor:device, subsystem, revision, class
    bars: tuple[tuple, ...]                   # (index, kind, size, memory_size, dpa_base) per BAR

    @classmethod
    def of(cls, profile: Profile) -> "DeviceIdentity":
        pci = (f"{profile.vendor_id:04x}:{profile.device_id:04x} subsystem {profile.subsystem_vendor_id:04x}:"
               f"{profile.subsystem_id:04x} rev {profile.revision:02x} class {profile.class_code:06x}")
        bars = tuple((b.index, b.kind, b.size, b.memory_size, b.dpa_base) for b in profile.bars)
        return cls(profile.name, pci, bars)

    def encode(self) -> bytes:
        return json.dumps({"profile": self.profile, "pci": self.pci, "bars": [list(b) for b in self.bars]},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> "DeviceIdentity":
        try:
            doc = json.loads(raw.decode("utf-8"))
            bars = tuple(tuple(b) for b in doc["bars"])
            if not (isinstance(doc["profile"], str) and isinstance(doc["pci"], str)
                    and all(len(b) == 5 for b in bars)):
                raise ValueError("bad field types")
            return cls(doc["profile"], doc["pci"], bars)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PoisonFileError(f"{where}: unreadable device identity ({exc})") from None

    def layout(self) -> str:
        """The BARs in words, for an error message."""
        return ", ".join(f"BAR{i} {kind} {format_size(size)}"
                         + (f" ({format_size(mem)} at dpa {dpa:#x})" if kind == "memory" else "")
                         for i, kind, size, mem, dpa in self.bars)

    def mismatch(self, other: "DeviceIdentity") -> str | None:
        """How ``other`` differs from this identity, in words naming both; None if it does not."""
        for aspect, mine, theirs in (("profile", repr(self.profile), repr(other.profile)),
                                     ("PCI ids", self.pci, other.pci),
                                     ("BAR layout", self.layout(), other.layout())):
            if mine != theirs:
                return f"{aspect}: {mine} in the file, {theirs} for this device"
        return None


class PoisonFileContents(NamedTuple):
    generation: int
    identity: DeviceIdentity
    entries: list[tuple[int, int, int]]


def encode(entries: Iterable[tuple[int, int, int]], generation: int, identity: DeviceIdentity) -> bytes:
    entries = list(entries)
    ident = identity.encode()
    buf = bytearray(_HEADER.size + len(ident) + _ENTRY.size * len(entries) + _CRC.size)
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, len(ident), generation, len(entries))
    pos = _HEADER.size
    buf[pos:pos + len(ident)] = ident
    pos += len(ident)
    pack = _ENTRY.pack_into
    for bar, start, end in entries:
        pack(buf, pos, bar, 0, start, end)
        pos += _ENTRY.size
    _CRC.pack_into(buf, pos, zlib.crc32(memoryview(buf)[:pos]))
    return bytes(buf)


def decode(raw: bytes, where: str = "poison file") -> PoisonFileContents:
    """(generation, identity, [(bar, start, end), ...]) or PoisonFileError naming what is wrong."""
    if len(raw) < _HEADER.size + _CRC.size:
        raise PoisonFileError(f"{where}: truncated ({len(raw)} bytes, a valid file has at least "
                              f"{_HEADER.size + _CRC.size})")
    magic, version, ident_size, generation, count = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise PoisonFileError(f"{where}: bad magic {magic!r}, not a hugepfn poison file")
    if version == 1:
        raise PoisonFileError(f"{where}: format 1, written by an older hugepfn without the device it belongs "
                              "to; move it away to start this device without poison")
    if version != VERSION:
        raise PoisonFileError(f"{where}: unsupported version {version}")
    if ident_size > MAX_IDENTITY_BYTES:
        raise PoisonFileError(f"{where}: device identity of {ident_size} bytes, more than {MAX_IDENTITY_BYTES}")
    expected = _HEADER.size + ident_size + _ENTRY.size * count + _CRC.size
    if len(raw) != expected:
        raise PoisonFileError(f"{where}: torn or truncated ({len(raw)} bytes, header says {count} "
                              f"entries = {expected} bytes)")
    body = len(raw) - _CRC.size
    (crc,) = _CRC.unpack_from(raw, body)
    if zlib.crc32(memoryview(raw)[:body]) != crc:
        raise PoisonFileError(f"{where}: checksum mismatch, the file is corrupt")
    first = _HEADER.size + ident_size
    identity = DeviceIdentity.decode(raw[_HEADER.size:first], where)
    entries = [(bar, start, end) for bar, _r, start, end
               in _ENTRY.iter_unpack(memoryview(raw)[first:body])]
    for bar, start, end in entries:
        if not 0 <= bar <= 5 or end <= start:
            raise PoisonFileError(f"{where}: invalid entry bar={bar} [{start:#x}, {end:#x})")
    return PoisonFileContents(generation, identity, entries)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class PoisonStore:
    """Load and atomically save the poison list of one device."""

    FILENAME = "poison.bin"
    LOCKNAME = "device.lock"

    def __init__(self, state_dir: str | os.PathLike, identity: DeviceIdentity):
        self.identity = identity
        self.dir = Path(state_dir)
        self.path = self.dir / self.FILENAME
        self.tmp_path = self.dir / (self.FILENAME + ".tmp")
        self.generation = 0
        self._lock_fd = -1
        self._take_ownership()

    def _take_ownership(self) -> None:
        """One device per state dir: two writers would silently overwrite each other's list.
        The flock dies with the process, so a crashed owner never blocks a restart."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / self.LOCKNAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, f"state dir {self.dir} is in use by another device") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def load(self) -> list[tuple[int, int, int]]:
        """The saved entries; [] if there is no file yet.  A file of another device
        (DeviceIdentity) is refused, naming both."""
        try:
            raw = read_regular_file(self.path, MAX_FILE_BYTES, str(self.path))
        except FileNotFoundError:
            return []
        except InputError as exc:        # a FIFO, /dev/zero, a directory, or far too large
            raise PoisonFileError(str(exc)) from None
        contents = decode(raw, str(self.path))
        mismatch = contents.identity.mismatch(self.identity)
        if mismatch is not None:
            raise PoisonFileError(f"{self.path}: poison of another device, not loaded ({mismatch})")
        self.generation = contents.generation
        return contents.entries

    def save(self, entries: Iterable[tuple[int, int, int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = encode(entries, self.generation + 1, self.identity)
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            half = len(data) // 2
            os.write(fd, data[:half])
            _crash_point("mid-write")
            view = memoryview(data)[half:]
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _crash_point("before-rename")
        os.replace(self.tmp_path, self.path)
        _crash_point("after-rename")
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.generation += 1
