"""Field types of scenario files: numbers (ints or sizes such as "4G", "0x1000": the grammar of
hugepfn.abi.sizes), names, flags.

A Field converts and validates one raw TOML value; errors are ScenarioError messages that
name the place (``where``, e.g. "step 3 (access)") and the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hugepfn.abi.sizes import parse_size

from .errors import ScenarioError

@dataclass(frozen=True)
class Field:
    """One field of a step, a [[device]] table or a driver.  ``kind``: "num" (address/size,
    shown in hex), "int" (ids, counts), "str", "bool", "strlist", "table" (a TOML table checked
    against ``fields``), "any"; ``choices`` limits str values; ``check`` validates the converted
    value (returns an error text or None); ``build`` turns the checked value into what the code
    takes (e.g. a table into a tuple)."""
    name: str
    kind: str = "num"
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    hex_in_trace: bool | None = None        # default: True for "num"
    fields: tuple["Field", ...] = ()        # kind "table": its own fields
    build: Callable[[Any], Any] | None = None

    @property
    def shows_hex(self) -> bool:
        return self.kind == "num" if self.hex_in_trace is None else self.hex_in_trace

    def convert(self, raw: Any, where: str) -> Any:
        if self.kind == "table":
            if not isinstance(raw, dict):
                raise ScenarioError(f"{where}.{self.name}: expected a table, got {raw!r}")
            value = convert_fields(self.fields, raw, f"{where}.{self.name}")
            return self.build(value) if self.build is not None else value
        try:
            value = self._convert(raw)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {self.name}: {exc}") from None
        if self.choices is not None and value not in self.choices:
            raise ScenarioError(f"{where}: {self.name}: must be one of {', '.join(map(str, self.choices))}, "
                                f"got {raw!r}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ScenarioError(f"{where}: {self.name}: {problem}")
        return self.build(value) if self.build is not None else value

    def _convert(self, raw: Any) -> Any:
        if self.kind == "num":
            return parse_size(raw)
        if self.kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, got {raw!r}")
            return raw
        if self.kind == "str":
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {raw!r}")
            return raw
        if self.kind == "bool":
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw
        if self.kind == "strlist":
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise ValueError(f"expected a list of strings, got {raw!r}")
            return list(raw)
        if self.kind == "any":
            return raw
        raise ValueError(f"internal: unknown field kind {self.kind}")

    def to_trace(self, value: Any) -> Any:
        if self.shows_hex and isinstance(value, int) and not isinstance(value, bool):
            return f"{value:#x}"
        return value


def convert_fields(fields: tuple[Field, ...], raw: dict[str, Any], where: str,
                   extra_ok: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a TOML table against ``fields``: unknown keys, missing required ones, conversions."""
    known = {f.name for f in fields}
    for key in raw:
        if key not in known and key not in extra_ok:
            raise ScenarioError(f"{where}: unknown field {key!r} (expected {', '.join(sorted(known)) or 'none'})")
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in raw:
            out[f.name] = f.convert(raw[f.name], where)
        elif f.required:
            raise ScenarioError(f"{where}: {f.name}: missing")
        else:
            out[f.name] = f.default
    return out
