"""The poison list on disk: one file next to the device state, replaced atomically.

Format (little-endian), declared with construct as ``PoisonFile``:

    magic "HPFNPOIS" | u32 version=1 | u32 reserved=0 | u64 generation | u64 count
    count x { u32 bar | u32 reserved=0 | u64 start | u64 end }     (merged, sorted per BAR)
    u32 crc32 of every byte before it

Saving writes ``<file>.tmp``, fsyncs it, renames it over the file and fsyncs the
directory, so a crash leaves either the old or the new list.  Loading checks the size,
the magic, the version and the CRC; any mismatch raises PoisonFileError, never an empty
list.  The struct path below does the bulk work; tests check it agrees with construct.

``HUGEPFN_POISON_CRASH_AT`` (tests only) SIGKILLs the process at one point of a save:
``mid-write`` (half of the temp file written), ``before-rename``, ``after-rename``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import zlib
from pathlib import Path
from typing import Iterable

from construct import Array, Const, Int32ul, Int64ul, Struct, this

MAGIC = b"HPFNPOIS"
VERSION = 1
CRASH_ENV = "HUGEPFN_POISON_CRASH_AT"

PoisonEntry = Struct(
    "bar" / Int32ul,
    "reserved" / Const(0, Int32ul),
    "start" / Int64ul,
    "end" / Int64ul,
)
PoisonFile = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int32ul),
    "reserved" / Const(0, Int32ul),
    "generation" / Int64ul,
    "count" / Int64ul,
    "entries" / Array(this.count, PoisonEntry),
    "crc32" / Int32ul,
)
_HEADER = struct.Struct("<8sIIQQ")
_ENTRY = struct.Struct("<IIQQ")
_CRC = struct.Struct("<I")


class PoisonFileError(ValueError):
    """The poison file exists but cannot be trusted (torn, truncated, corrupt)."""


def encode(entries: Iterable[tuple[int, int, int]], generation: int) -> bytes:
    entries = list(entries)
    buf = bytearray(_HEADER.size + _ENTRY.size * len(entries) + _CRC.size)
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, 0, generation, len(entries))
    pos = _HEADER.size
    pack = _ENTRY.pack_into
    for bar, start, end in entries:
        pack(buf, pos, bar, 0, start, end)
        pos += _ENTRY.size
    _CRC.pack_into(buf, pos, zlib.crc32(memoryview(buf)[:pos]))
    return bytes(buf)


def decode(raw: bytes, where: str = "poison file") -> tuple[int, list[tuple[int, int, int]]]:
    """(generation, [(bar, start, end), ...]) or PoisonFileError naming what is wrong."""
    if len(raw) < _HEADER.size + _CRC.size:
        raise PoisonFileError(f"{where}: truncated ({len(raw)} bytes, a valid file has at least "
                              f"{_HEADER.size + _CRC.size})")
    magic, version, _reserved, generation, count = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise PoisonFileError(f"{where}: bad magic {magic!r}, not a hugepfn poison file")
    if version != VERSION:
        raise PoisonFileError(f"{where}: unsupported version {version}")
    expected = _HEADER.size + _ENTRY.size * count + _CRC.size
    if len(raw) != expected:
        raise PoisonFileError(f"{where}: torn or truncated ({len(raw)} bytes, header says {count} "
                              f"entries = {expected} bytes)")
    body = len(raw) - _CRC.size
    (crc,) = _CRC.unpack_from(raw, body)
    if zlib.crc32(memoryview(raw)[:body]) != crc:
        raise PoisonFileError(f"{where}: checksum mismatch, the file is corrupt")
    entries = [(bar, start, end) for bar, _r, start, end
               in _ENTRY.iter_unpack(memoryview(raw)[_HEADER.size:body])]
    for bar, start, end in entries:
        if not 0 <= bar <= 5 or end <= start:
            raise PoisonFileError(f"{where}: invalid entry bar={bar} [{start:#x}, {end:#x})")
    return generation, entries


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class PoisonStore:
    """Load and atomically save the poison list of one device."""

    FILENAME = "poison.bin"
    LOCKNAME = "device.lock"

    def __init__(self, state_dir: str | os.PathLike):
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
        """The saved entries; [] if there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        self.generation, entries = decode(raw, str(self.path))
        return entries

    def save(self, entries: Iterable[tuple[int, int, int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = encode(entries, self.generation + 1)
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
