"""hugepfn.testing: the pytest plugin and helpers for fault-injection suites."""
