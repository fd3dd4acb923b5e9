"""The SVR4 "newc" cpio format the kernel unpacks into its initramfs (a writer only)."""
from __future__ import annotations

import gzip
import io
import stat

TRAILER = "TRAILER!!!"


class Newc:
    """Entries in the order added; ``finish()`` gives the gzip'ed archive."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        name_bytes = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.ino += 1
        self.out.write(header + name_bytes)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def finish(self, compresslevel: int = 6) -> bytes:
        self._entry(TRAILER, 0)
        return gzip.compress(self.out.getvalue(), compresslevel=compresslevel, mtime=0)
