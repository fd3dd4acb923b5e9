"""The one error type of scenario files."""
from __future__ import annotations


class ScenarioError(ValueError):
    """A scenario file is invalid or asks for something unsupported (one line, names the place)."""
