"""The test files docs/fault-injection.md shows (blocks marked `<!-- docs-example: NAME -->`)
pass as a newcomer would run them."""
from __future__ import annotations

import re
from pathlib import Path

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "fault-injection.md"
EXAMPLE = re.compile(r"<!-- docs-example: (\S+) -->\n```python\n(.*?)```", re.S)


def test_every_docs_example_passes(pytester):
    examples = dict(EXAMPLE.findall(DOC.read_text()))
    assert sorted(examples) == ["test_consume_before_report.py", "test_event.py", "test_monitor.py",
                                "test_poison.py", "test_shared_host.py"]
    for name, code in examples.items():
        (pytester.path / name).write_text(code)
    result = pytester.runpytest("-q")
    # test_poison and test_shared_host are parametrized over two cases each
    result.assert_outcomes(passed=7)
