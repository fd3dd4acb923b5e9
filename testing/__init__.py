"""hugepfn.testing: the pytest plugin and helpers for fault-injection suites (docs/fault-injection.md).

    from hugepfn.testing import assert_signal, assert_mapping, assert_no_signal, run_scenario
"""
from .asserts import assert_mapping, assert_no_signal, assert_signal, format_signal
from .host import BarMapping, Host, HostError, PoisonConsumed, PoisonResult, Proc
from .scenario import run_scenario
from .served import ServedDevice, serve_device

__all__ = ["BarMapping", "Host", "HostError", "PoisonConsumed", "PoisonResult", "Proc", "ServedDevice", "assert_mapping",
           "assert_no_signal", "assert_signal", "format_signal", "run_scenario", "serve_device"]
