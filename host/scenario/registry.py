"""What scenario files can say and what a run does besides the steps: one registry object.

* ``step_kinds``: kind name -> StepKind (fields and handler), in the order error messages list them;
* ``device_fields``: extra [[device]] fields of the models (``serve``), their values in DeviceSpec.extra;
* ``preparers``: ``prepare(machine, spec, driver_args)`` -> the bound host device or None, asked in
  order before the plain binding (a served device is attached over vfio-user);
* ``finishers``: ``finish(run)`` after the last step, in order (trace facts, closing servers);
* ``step_wrappers``: ``wrap(name, handler)`` -> handler, applied to every kind's handler, in order.

The default registry is filled in one place, hugepfn.host.scenario.wiring; a test or an embedder
builds its own with ``copy()`` and passes it to parse_scenario / ScenarioRun.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from ..machine import Machine
    from .fields import Field
    from .runner import ScenarioRun
    from .spec import DeviceSpec
    from .steps import Handler, StepKind

Preparer = Callable[["Machine", "DeviceSpec", dict], Any]
Finisher = Callable[["ScenarioRun"], None]
StepWrapper = Callable[[str, "Handler"], "Handler"]


@dataclass
class ScenarioRegistry:
    step_kinds: dict[str, "StepKind"] = field(default_factory=dict)
    device_fields: list["Field"] = field(default_factory=list)
    preparers: list[Preparer] = field(default_factory=list)
    finishers: list[Finisher] = field(default_factory=list)
    step_wrappers: list[StepWrapper] = field(default_factory=list)
    _handlers: dict[str, "Handler | None"] = field(default_factory=dict, repr=False, compare=False)

    def add_kinds(self, kinds: Iterable["StepKind"]) -> None:
        """Declare step kinds (a kind declared again keeps its place and takes the new schema)."""
        for kind in kinds:
            self.step_kinds[kind.name] = kind
        self._handlers.clear()

    def handler(self, name: str) -> "Handler | None":
        """The handler of kind ``name`` with every step wrapper applied (None: declared only)."""
        if name not in self._handlers:
            handler = self.step_kinds[name].handler
            if handler is not None:
                for wrap in self.step_wrappers:
                    handler = wrap(name, handler)
            self._handlers[name] = handler
        return self._handlers[name]

    def copy(self) -> "ScenarioRegistry":
        """An independent registry with the same contents (change it without touching this one)."""
        return ScenarioRegistry(dict(self.step_kinds), list(self.device_fields), list(self.preparers),
                                list(self.finishers), list(self.step_wrappers))

    def without_handler(self, name: str) -> "ScenarioRegistry":
        """A copy in which kind ``name`` is declared but has no handler."""
        out = self.copy()
        out.step_kinds[name] = dataclasses.replace(out.step_kinds[name], handler=None)
        return out

    def __deepcopy__(self, memo: dict) -> "ScenarioRegistry":
        return self                        # shared: copying a scenario keeps what it was parsed with
