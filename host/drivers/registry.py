"""Which variant drivers exist: one registry, filled from three sources.

* the entry-point group ``hugepfn.drivers`` (``name = "package.module:DriverClass"``): what an
  installed package provides, hugepfn's own two drivers included;
* driver modules (``--driver-module MODULE``, a scenario's ``plugins = ["MODULE"]``, the pytest
  ini key ``hugepfn_drivers``): a module whose ``HUGEPFN_DRIVERS`` maps names to driver classes;
* ``register_driver(name, cls)`` from Python.

A driver class subclasses VfioPciCoreDevice (docs/driver-authors.md).  Entry points are read
once and loaded when a driver is first asked for, so a broken third-party package breaks only
its own driver.  The process-wide registry (``default_registry()``) knows the entry points and
what was registered; a scenario with ``plugins`` gets a registry of its own layered over it, so
one scenario's plugins never change what another scenario sees.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Iterable

from ..driver_error import DriverError

if TYPE_CHECKING:
    from .vfio_pci_core import VfioPciCoreDevice

ENTRY_POINT_GROUP = "hugepfn.drivers"
MODULE_ATTRIBUTE = "HUGEPFN_DRIVERS"
HOW_TO_ADD = (f"add one with --driver-module MODULE, a scenario's plugins = [\"MODULE\"] or the "
              f"{ENTRY_POINT_GROUP} entry point")


def _check_driver(name: str, cls: object, source: str) -> type["VfioPciCoreDevice"]:
    from .vfio_pci_core import VfioPciCoreDevice

    if not (isinstance(cls, type) and issubclass(cls, VfioPciCoreDevice)):
        raise DriverError(f"driver {name!r} from {source}: {cls!r} is not a subclass of VfioPciCoreDevice")
    return cls


class DriverRegistry:
    """Driver name -> driver class.  ``parent``: a registry this one adds to (lookups fall
    through to it); the root reads the entry points."""

    def __init__(self, parent: "DriverRegistry | None" = None, entry_points: bool = True) -> None:
        self.parent = parent
        self._classes: dict[str, type["VfioPciCoreDevice"]] = {}
        self._sources: dict[str, str] = {}
        self._entry_points: dict[str, list[importlib.metadata.EntryPoint]] | None = None if entry_points else {}

    # -- sources ------------------------------------------------------------------------------
    def register(self, name: str, cls: type["VfioPciCoreDevice"], source: str = "register_driver") -> None:
        """Make ``cls`` the driver ``name`` (re-registering the same class is a no-op)."""
        if not isinstance(name, str) or not name:
            raise DriverError(f"a driver name must be a non-empty string, got {name!r} from {source}")
        cls = _check_driver(name, cls, source)
        known = self._classes.get(name)
        if known is None and self.parent is not None and name in self.parent:
            known = self.parent.get(name)
            if known is cls:
                return
        if known is not None and known is not cls:
            raise DriverError(f"driver {name!r} is already {known.__module__}.{known.__qualname__}; "
                              f"{source} cannot make it another class")
        self._classes[name] = cls
        self._sources[name] = source

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)
        self._sources.pop(name, None)

    def load_module(self, module_name: str, source: str | None = None) -> list[str]:
        """Import ``module_name`` and register the drivers its HUGEPFN_DRIVERS declares."""
        source = source or f"module {module_name}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DriverError(f"{source}: cannot import {module_name!r}: {exc}") from None
        declared = getattr(module, MODULE_ATTRIBUTE, None)
        if not isinstance(declared, dict) or not declared:
            raise DriverError(f"{source}: {module_name} declares no drivers (give it {MODULE_ATTRIBUTE} = "
                              "{\"name\": DriverClass})")
        for name, cls in declared.items():
            self.register(name, cls, source)
        return list(declared)

    def load_modules(self, modules: Iterable[str], source: str | None = None) -> None:
        for module_name in modules:
            self.load_module(module_name, source)

    def child(self) -> "DriverRegistry":
        """A registry that adds drivers to this one without changing it."""
        return DriverRegistry(parent=self, entry_points=False)

    # -- entry points ---------------------------------------------------------------------------------
    def _installed(self) -> dict[str, list[importlib.metadata.EntryPoint]]:
        if self._entry_points is None:
            found: dict[str, list[importlib.metadata.EntryPoint]] = {}
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                found.setdefault(ep.name, [])
                if all(other.value != ep.value for other in found[ep.name]):
                    found[ep.name].append(ep)      # an editable and a regular install may both list it
            self._entry_points = found
        return self._entry_points

    def _load_entry_point(self, name: str) -> type["VfioPciCoreDevice"] | None:
        eps = self._installed().get(name)
        if not eps:
            return None
        if len(eps) > 1:
            raise DriverError(f"driver {name!r} is provided by several packages "
                              f"({', '.join(ep.value for ep in eps)}): uninstall all but one")
        source = f"entry point {ENTRY_POINT_GROUP}:{name} = {eps[0].value}"
        try:
            cls = eps[0].load()
        except Exception as exc:           # a third-party package's import error, whatever it is
            raise DriverError(f"driver {name!r}: {source} cannot be loaded: {type(exc).__name__}: {exc}") from None
        self.register(name, cls, source)
        return cls

    # -- lookups ----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every driver name this registry knows (loaded or not), sorted."""
        out = set(self.parent.names()) if self.parent is not None else set()
        return sorted(out | set(self._installed()) | set(self._classes))

    def get(self, name: str) -> type["VfioPciCoreDevice"]:
        cls = self._classes.get(name) or self._load_entry_point(name)
        if cls is not None:
            return cls
        if self.parent is not None and name in self.parent:
            return self.parent.get(name)
        raise DriverError(f"unknown driver {name!r} (installed: {', '.join(self.names()) or 'none'}; {HOW_TO_ADD})")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def declaring(self, field_name: str) -> list[str]:
        """The names of loadable drivers that declare the scenario field ``field_name``."""
        out = []
        for name in self.names():
            try:
                cls = self.get(name)
            except DriverError:
                continue
            if any(f.name == field_name for f in cls.fields):
                out.append(name)
        return out

    def __deepcopy__(self, memo: dict) -> "DriverRegistry":
        return self                        # shared: copying a scenario keeps its drivers


_DEFAULT = DriverRegistry()


def default_registry() -> DriverRegistry:
    """The process-wide registry: entry points plus what register_driver and driver modules added."""
    return _DEFAULT


def register_driver(name: str, cls: type["VfioPciCoreDevice"]) -> None:
    """Make a variant driver available to Machine.add_device and to scenarios by name."""
    _DEFAULT.register(name, cls)


def unregister_driver(name: str) -> None:
    """Forget a driver registered with register_driver (entry points stay installed)."""
    _DEFAULT.unregister(name)


def load_driver_modules(modules: Iterable[str], source: str = "--driver-module") -> None:
    """Register the drivers of ``modules`` process-wide (the CLI's --driver-module)."""
    _DEFAULT.load_modules(modules, source)
