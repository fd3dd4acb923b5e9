"""The 4 KiB config space of one PCI function: a bytearray plus per-byte write masks.

Every bit is one of: read-only (the default), read-write (``rw`` mask) or write-1-to-clear
(``w1c`` mask).  Writes are applied per dword with byte enables:

    new = ((old & ~(rw & be)) | (value & rw & be)) & ~(value & w1c & be)

so BAR sizing falls out of the masks (writing all ones reads back the size mask and the
read-only type bits).  Registers whose writes have side effects (COMMAND, MSI-X message
control, FLR, Resizable BAR control) register a hook on their dword; hooks run after the
masked write with ``(old, new, written)``.

``read32``/``write32`` are the struct fast path for aligned dword accesses, the common
case of any config cycle; ``read``/``write`` handle any size and alignment.
"""
from __future__ import annotations

import errno
import struct
from typing import Callable

from hugepfn.abi.pci import CONFIG_SPACE_SIZE

Hook = Callable[[int, int, int], None]   # (old, new, written) of one dword
_U32 = struct.Struct("<I")
_DWORDS = CONFIG_SPACE_SIZE // 4


class ConfigSpace:
    size = CONFIG_SPACE_SIZE

    def __init__(self, image: bytes, rw_mask: bytes, w1c_mask: bytes):
        if not len(image) == len(rw_mask) == len(w1c_mask) == CONFIG_SPACE_SIZE:
            raise ValueError("config image and masks must be 4096 bytes each")
        self._image = bytes(image)
        self.data = bytearray(image)
        self._rw = list(struct.unpack(f"<{_DWORDS}I", rw_mask))
        self._w1c = list(struct.unpack(f"<{_DWORDS}I", w1c_mask))
        self._rw_initial = list(self._rw)
        self.hooks: dict[int, Hook] = {}      # dword-aligned offset -> hook

    # -- masks ------------------------------------------------------------------------------
    def rw_mask32(self, offset: int) -> int:
        return self._rw[offset >> 2]

    def w1c_mask32(self, offset: int) -> int:
        return self._w1c[offset >> 2]

    def set_rw_mask32(self, offset: int, mask: int) -> None:
        """Change which bits of a dword are writable (Resizable BAR changes a BAR's size)."""
        self._rw[offset >> 2] = mask & 0xFFFFFFFF

    def reset(self) -> None:
        self.data[:] = self._image
        self._rw[:] = self._rw_initial

    def set_reset_value(self, offset: int, data: bytes) -> None:
        """Change both the live value and the value restored by reset (e.g. a BAR's flags)."""
        image = bytearray(self._image)
        image[offset:offset + len(data)] = data
        self._image = bytes(image)
        self.data[offset:offset + len(data)] = data

    # -- fast path ---------------------------------------------------------------------------
    def read32(self, offset: int) -> int:
        if offset & 3 or not 0 <= offset < CONFIG_SPACE_SIZE:
            raise OSError(errno.EINVAL, f"config read32 at {offset:#x} is not an aligned dword")
        return _U32.unpack_from(self.data, offset)[0]

    def write32(self, offset: int, value: int) -> None:
        if offset & 3 or not 0 <= offset < CONFIG_SPACE_SIZE:
            raise OSError(errno.EINVAL, f"config write32 at {offset:#x} is not an aligned dword")
        i = offset >> 2
        data = self.data
        old = _U32.unpack_from(data, offset)[0]
        rw = self._rw[i]
        new = ((old & ~rw) | (value & rw)) & ~(value & self._w1c[i])
        if new != old:
            _U32.pack_into(data, offset, new)
        hook = self.hooks.get(offset)
        if hook is not None:
            hook(old, new, value)

    # -- any size ---------------------------------------------------------------------------
    def _check(self, offset: int, count: int, what: str) -> None:
        if count <= 0 or offset < 0 or offset + count > CONFIG_SPACE_SIZE:
            raise OSError(errno.EINVAL, f"config {what} of {count} bytes at {offset:#x} is outside "
                                        f"the {CONFIG_SPACE_SIZE}-byte config space")

    def read(self, offset: int, count: int) -> bytes:
        self._check(offset, count, "read")
        return bytes(self.data[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        count = len(data)
        self._check(offset, count, "write")
        if count == 4 and not offset & 3:
            self.write32(offset, _U32.unpack(data)[0])
            return
        end = offset + count
        dword = offset & ~3
        while dword < end:
            lo, hi = max(offset, dword), min(end, dword + 4)
            chunk = bytearray(4)
            chunk[lo - dword:hi - dword] = data[lo - offset:hi - offset]
            be = int.from_bytes(bytes(0xFF if lo <= dword + b < hi else 0 for b in range(4)), "little")
            self._write_masked(dword, _U32.unpack(chunk)[0], be)
            dword += 4

    def _write_masked(self, offset: int, value: int, be: int) -> None:
        i = offset >> 2
        old = _U32.unpack_from(self.data, offset)[0]
        rw = self._rw[i] & be
        new = ((old & ~rw) | (value & rw)) & ~(value & self._w1c[i] & be)
        _U32.pack_into(self.data, offset, new)
        hook = self.hooks.get(offset)
        if hook is not None:
            hook(old, new, value & be)

    # -- convenience for the device model (not for the wire) --------------------------------
    def field(self, offset: int, width: int) -> int:
        return int.from_bytes(self.data[offset:offset + width], "little")

    def set_field(self, offset: int, width: int, value: int) -> None:
        """Device-side update of a read-only field (status bits the hardware sets)."""
        self.data[offset:offset + width] = value.to_bytes(width, "little")
