"""The one size grammar of hugepfn: device profiles, scenario files, the control channel and
command-line flags all read sizes and offsets with ``parse_size``.

A size is a non-negative integer, or a string: a number — decimal, ``0x`` hex, ``0o`` octal or
``0b`` binary, with ``_`` between digits as Python allows (``1_000``, ``0x4000_0000``) — and
an optional binary unit K, M, G, T, P or E, optionally followed by ``iB`` or ``B`` and in
either case (``4K``, ``4k``, ``2MiB``, ``8GiB``, ``1 TiB``); ``B`` alone means bytes.  A hex
number's digits include b: ``0x1B`` is 27, not 1 byte.
"""
from __future__ import annotations

import re
from typing import Any

EXAMPLES = "4K, 0x1000, 8GiB or 1_000"
_SIZE = re.compile(r"\s*(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)\s*"
                   r"(?:([kKmMgGtTpPeE])(?:[iI]?[bB])?|[bB])?\s*\Z")
_SHIFTS = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def parse_size(value: Any, limit: int | None = None) -> int:
    """``value`` as a number of bytes; ValueError with a one-line reason otherwise.  ``limit``:
    the value must be below it (2**64 for what the wire carries as a u64)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as {EXAMPLES}, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"expected a size such as {EXAMPLES}, got {value!r}")
        digits, unit = match.groups()
        try:
            number = int(digits, 0) if digits[:2].lower() in ("0x", "0o", "0b") else int(digits, 10)
        except ValueError:           # "1__0", "0x_": a misplaced underscore
            raise ValueError(f"expected a size such as {EXAMPLES}, got {value!r}") from None
        if unit:
            number <<= _SHIFTS[unit.upper()]
    else:
        raise ValueError(f"expected a size such as {EXAMPLES}, got {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    if limit is not None and number >= limit:
        raise ValueError(f"must be below {limit:#x}, got {value!r}")
    return number


def format_size(size: int) -> str:
    """Binary units, as lspci prints them: 64MiB, 8GiB; 96GiB + 6MiB stays in MiB."""
    for unit, name in _UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"
