"""hugepfn.host.scenario: scenario files (TOML) -> a machine, steps, and a trace.

    from hugepfn.host.scenario import run_scenario
    trace = run_scenario("fixtures/scenarios/demo.toml")
    print(trace.render())          # or trace.to_json()

New step kinds (or handlers for declared ones) are registered with register_step_kind /
set_step_handler from hugepfn.host.scenario.steps.
"""
from .errors import ScenarioError
from .fields import Field, parse_number
from .runner import ScenarioRun, build_machine, run_scenario
from .spec import Scenario, Step, load_scenario, parse_scenario
from .steps import STEP_KINDS, register_step_kind, set_step_handler
