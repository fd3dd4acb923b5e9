"""pytest plugin registered through the `pytest11` entry point (fixtures are added as the parts land)."""
