"""The device's hardware truth about bad memory: poisoned ranges per memory BAR.

Ranges are tracked at cacheline (64 B) granularity.  An injection names a place (BAR +
offset, or a device physical address) and a granularity, the "blast radius" the
hardware reports (64 B .. 1 GiB); the poisoned range is that naturally aligned block,
clipped to the BAR's real memory.  The page-level view the host needs (which 4 KiB pages
hold poison) is derived, never stored.

Every change is persisted (when the device has a state dir) *before* the error record is
queued and the interrupt raised, so what the host is told is always durable.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from hugepfn.abi.cper import CACHELINE, CPER_MEM_ERR_MULTI_ECC
from hugepfn.device.poison_store import PoisonFileError, PoisonStore
from hugepfn.device.profiles import GiB, BarSpec
from hugepfn.device.ranges import RangeSet

MIN_GRANULARITY = CACHELINE
MAX_GRANULARITY = 1 * GiB
# The blast radius a fault-injection request reports when it names none: one 4 KiB page.  The
# CLI (`hugepfn inject`), the control channel, scenario `inject` steps and the pytest plugin's
# `Host.poison` all use it; the model's own primitives below default to one cacheline.
DEFAULT_GRANULARITY = 4096
PAGE_SHIFT = 12


class PoisonError(ValueError):
    """A bad injection or query (unknown BAR, address outside device memory, bad granularity)."""


@dataclass(frozen=True)
class PoisonEvent:
    """One injection, as the error record reports it."""
    bar: int
    offset: int           # first poisoned byte inside the BAR
    length: int           # bytes poisoned (granularity clipped to the memory)
    dpa: int              # device physical address of ``offset``
    granularity: int
    error_type: int


@dataclass(frozen=True)
class PoisonRange:
    bar: int
    offset: int
    length: int
    dpa: int


class PoisonModel:
    def __init__(self, bars: tuple[BarSpec, ...], store: PoisonStore | None = None,
                 on_inject: Callable[[PoisonEvent], None] | None = None,
                 lock: threading.RLock | None = None):
        self._bars = {b.index: b for b in bars if b.kind == "memory"}
        self._sets = {i: RangeSet() for i in self._bars}
        self.store = store
        self.on_inject = on_inject
        # The device passes its own lock: a served read must never see a half-spliced set.
        self.lock = lock if lock is not None else threading.RLock()
        if store is not None:
            self._load()

    # -- addressing --------------------------------------------------------------------------
    @property
    def bars(self) -> tuple[int, ...]:
        return tuple(self._bars)

    def _bar(self, bar: int) -> BarSpec:
        try:
            return self._bars[bar]
        except KeyError:
            raise PoisonError(f"BAR {bar} is not a memory BAR (memory BARs: "
                              f"{', '.join(map(str, self._bars)) or 'none'})") from None

    def bar_to_dpa(self, bar: int, offset: int) -> int:
        spec = self._bar(bar)
        if not 0 <= offset < spec.memory_size:
            raise PoisonError(f"offset {offset:#x} is outside BAR {bar}'s {spec.memory_size:#x} bytes of memory")
        return spec.dpa_base + offset

    def dpa_to_bar(self, dpa: int) -> tuple[int, int]:
        for index, spec in self._bars.items():
            if spec.dpa_base <= dpa < spec.dpa_base + spec.memory_size:
                return index, dpa - spec.dpa_base
        raise PoisonError(f"device physical address {dpa:#x} is not in any memory BAR")

    # -- changes -----------------------------------------------------------------------------
    def inject(self, *, bar: int | None = None, offset: int | None = None, dpa: int | None = None,
               granularity: int = CACHELINE, error_type: int = CPER_MEM_ERR_MULTI_ECC) -> PoisonEvent:
        """Poison the naturally aligned ``granularity`` block holding BAR ``bar`` + ``offset``
        (or device physical address ``dpa``); persist; then report through ``on_inject``."""
        if (dpa is None) == (bar is None or offset is None):
            raise PoisonError("inject needs either bar= and offset=, or dpa=")
        if not (MIN_GRANULARITY <= granularity <= MAX_GRANULARITY
                and granularity & (granularity - 1) == 0):
            raise PoisonError(f"granularity {granularity:#x} must be a power of two from 64 B to 1 GiB")
        if dpa is not None:
            bar, offset = self.dpa_to_bar(dpa)
        spec = self._bar(bar)
        self.bar_to_dpa(bar, offset)            # range check
        start = offset & ~(granularity - 1)
        end = min(start + granularity, spec.memory_size)
        with self.lock:
            self._sets[bar].add(start, end)
            self._persist()
        event = PoisonEvent(bar=bar, offset=start, length=end - start, dpa=spec.dpa_base + start,
                            granularity=granularity, error_type=error_type)
        if self.on_inject is not None:
            self.on_inject(event)
        return event

    def repair(self, bar: int, offset: int, length: int) -> int:
        """Clear poison in [offset, offset+length), widened to whole cachelines; returns bytes cleared."""
        self._bar(bar)
        start = offset & ~(CACHELINE - 1)
        end = -(-(offset + length) // CACHELINE) * CACHELINE
        with self.lock:
            cleared = self._sets[bar].remove(start, end)
            if cleared:
                self._persist()
        return cleared

    def repair_covered(self, bar: int, offset: int, length: int) -> int:
        """Repair-by-write: clear only the cachelines a write of [offset, offset+length) fully covers."""
        start = -(-offset // CACHELINE) * CACHELINE
        end = (offset + length) & ~(CACHELINE - 1)
        if end <= start:
            return 0
        with self.lock:
            cleared = self._sets[bar].remove(start, end)
            if cleared:
                self._persist()
        return cleared

    def clear(self) -> None:
        with self.lock:
            for ranges in self._sets.values():
                ranges.clear()
            self._persist()

    # -- queries -----------------------------------------------------------------------------
    def is_poisoned(self, bar: int, offset: int, length: int = 1) -> bool:
        """Is any byte of [offset, offset+length) of BAR ``bar`` poisoned?"""
        ranges = self._sets.get(bar)
        if ranges is None:
            return False
        with self.lock:
            return ranges.overlaps(offset, offset + length)

    def first_poisoned(self, bar: int, offset: int, length: int) -> int | None:
        ranges = self._sets.get(bar)
        if ranges is None:
            return None
        with self.lock:
            return ranges.first_in(offset, offset + length)

    def ranges(self, bar: int) -> RangeSet:
        """The live range set of one BAR (hold ``lock`` if other threads inject)."""
        return self._sets[self._bar(bar).index]

    def __iter__(self) -> Iterator[PoisonRange]:
        """A snapshot: iterating while another thread injects is safe."""
        with self.lock:
            items = [PoisonRange(bar=bar, offset=s, length=e - s, dpa=self._bars[bar].dpa_base + s)
                     for bar, ranges in self._sets.items() for s, e in ranges]
        return iter(items)

    def __len__(self) -> int:
        return sum(len(r) for r in self._sets.values())

    def poisoned_pages(self, bar: int, page_shift: int = PAGE_SHIFT) -> Iterator[int]:
        """BAR-relative page numbers (offset >> page_shift) of pages holding poison."""
        return self.ranges(bar).pages(page_shift)

    def poisoned_pfns(self, bar: int | None = None, page_shift: int = PAGE_SHIFT) -> Iterator[int]:
        """Device page frame numbers (dpa >> page_shift) of pages holding poison.

        A host with BAR ``bar`` at bus address A turns one into a host pfn as
        ``(A + ((pfn << page_shift) - dpa_base)) >> page_shift``.
        """
        for index in (self._bars if bar is None else (self._bar(bar).index,)):
            base = self._bars[index].dpa_base
            if base % (1 << page_shift):
                raise PoisonError(f"BAR {index} dpa_base {base:#x} is not {1 << page_shift}-byte aligned")
            for page in self._sets[index].pages(page_shift):
                yield (base >> page_shift) + page

    # -- persistence -------------------------------------------------------------------------
    def entries(self) -> list[tuple[int, int, int]]:
        with self.lock:
            return [(bar, s, e) for bar, ranges in self._sets.items() for s, e in ranges]

    def _persist(self) -> None:
        if self.store is not None:
            self.store.save(self.entries())

    def _load(self) -> None:
        per_bar: dict[int, list[tuple[int, int]]] = {}
        for bar, start, end in self.store.load():
            spec = self._bars.get(bar)
            if spec is None or end > spec.memory_size:
                raise PoisonFileError(f"{self.store.path}: entry bar={bar} [{start:#x}, {end:#x}) "
                                      "does not fit this device profile")
            per_bar.setdefault(bar, []).append((start, end))
        for bar, ranges in per_bar.items():
            self._sets[bar].update(ranges)
