"""Finding scenario files: a path, a directory of them, or the bare name of a bundled one
("demo" is fixtures/scenarios/demo.toml)."""
from __future__ import annotations

import os
from pathlib import Path

from hugepfn.fixtures import SCENARIOS


def bundled() -> list[Path]:
    """The scenario files that come with hugepfn, by name."""
    return sorted(SCENARIOS.glob("*.toml"))


def resolve(name: str | os.PathLike) -> Path:
    """A scenario path: ``name`` itself when it exists, else the bundled scenario of that bare
    name.  FileNotFoundError (naming the bundled ones) when neither exists."""
    path = Path(name)
    if path.exists():
        return path
    if path.suffix == "" and path.parent == Path(".") and (SCENARIOS / f"{path}.toml").exists():
        return SCENARIOS / f"{path}.toml"
    raise FileNotFoundError(2, f"no scenario file or bundled scenario {os.fspath(name)!r} "
                               f"(`hugepfn scenarios` lists the {len(bundled())} bundled ones)", os.fspath(name))


def expand(names: list[str | os.PathLike]) -> list[Path]:
    """Every scenario ``names`` denote, in order: a directory gives its *.toml files, sorted."""
    out: list[Path] = []
    for name in names:
        path = resolve(name)
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise FileNotFoundError(2, f"no *.toml scenario files in directory {path}", str(path))
            out += found
        else:
            out.append(path)
    return out
