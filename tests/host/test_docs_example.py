"""docs/driver-authors.md is built around examples/poison-aware-gpu: the driver it shows is that
package's driver, byte for byte; the Python session it shows runs and gives the values its
``# ->`` comments say (on BAR 2: the example is not tied to BAR 0); and every public method of
the core driver is in its tables (what a driver declares, the building blocks)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from hugepfn.host.drivers.vfio_pci_core import VfioPciCoreDevice
from hugepfn.host.mm.pagetable import Leaf

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "driver-authors.md").read_text()
EXAMPLE = REPO / "examples" / "poison-aware-gpu" / "src" / "poison_aware_gpu" / "__init__.py"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)


def test_the_page_shows_the_example_driver_as_it_is():
    assert BLOCKS[0] == EXAMPLE.read_text()


def test_the_documented_session_gives_the_documented_values():
    namespace: dict = {"Leaf": Leaf}
    checked = 0
    for line in BLOCKS[1].splitlines():
        code, _, comment = line.partition("#")
        if not code.strip():
            continue
        if comment.startswith(" ->"):
            want = comment[3:].split("(the", 1)[0].strip()
            got = eval(compile(code, "driver-authors.md", "eval"), namespace)
            assert got == eval(want, namespace), f"{code.strip()}: {got!r}, the page says {want}"
            checked += 1
        else:
            exec(compile(code, "driver-authors.md", "exec"), namespace)
    assert checked == 5


def test_every_public_method_of_the_core_is_a_documented_building_block():
    table = DOC[DOC.index("## What a driver declares"):DOC.index("## Rules worth knowing")]
    methods = [name for name, value in vars(VfioPciCoreDevice).items()
               if not name.startswith("_") and callable(getattr(VfioPciCoreDevice, name))]
    assert [m for m in methods if not re.search(rf"`{m}\(", table) and f"`{m}`" not in table] == []
    # and what the example calls on it
    used = {node.attr for node in ast.walk(ast.parse(EXAMPLE.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    core = {name for name in used if hasattr(VfioPciCoreDevice, name) and callable(getattr(VfioPciCoreDevice, name))}
    assert core and all(re.search(rf"`{name}\(", table) for name in core)
