"""A PNG of what each policy left mapped: one row per policy and process, showing the BAR
(device region) holding the first poisoned page as a band coloured by mapping level (PUD / PMD
/ PTE), memory a zap unmapped (drawn apart from memory never mapped), and the poisoned pages
marked, at four scales: the whole region, the 1 GiB, the 2 MiB and the 16 pages around the
first poisoned page; and a fifth panel, a strip with one line per step, showing how the leaves
of the whole region changed from step to step.  matplotlib with the Agg backend (no display)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..mm.constants import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE, VFIO_PCI_PGOFF_MASK, VFIO_PCI_PGOFF_SHIFT
from .regions import region_extent
from .summary import format_bytes

if TYPE_CHECKING:
    from .compare import PolicyRun

COLOURS = {"pud": "#3b6fb6", "pmd": "#49a35b", "pte": "#f0a030", "unmapped": "#e4e4e4", "zapped": "#7f7f7f",
           "poison": "#d62728"}
LABELS = {"pud": "PUD leaf (1 GiB)", "pmd": "PMD leaf (2 MiB)", "pte": "PTE leaf (4 KiB)",
          "unmapped": "never mapped", "zapped": "zapped (was mapped, now not)", "poison": "poisoned page"}


@dataclass
class RegionView:
    """Leaves of one process over one device region, as (level, offset, length) runs."""
    title: str
    size: int
    runs: list[tuple[str, int, int]] = field(default_factory=list)
    poisoned: list[int] = field(default_factory=list)       # byte offsets in the region
    zapped: list[tuple[int, int]] = field(default_factory=list)   # (offset, length) unmapped by zaps
    pid: int = 0


def _poisoned_pfns(machine) -> list[int]:
    from . import memory_failure_of
    mf = memory_failure_of(machine)
    pfns = mf.hardware.poisoned_pfns()
    for state in mf.drivers.values():
        pfns.update(state.poison)
    repaired = getattr(mf, "repaired_at", {})
    pfns.update(out.pfn for i, out in enumerate(mf.outcomes) if i >= repaired.get(out.pfn, -1))
    return sorted(pfns)


def _region_of(machine):
    """(device, region index, base pfn, size) of the region to draw: the first mapped one that
    holds poison, else the first mapped one; None when nothing maps a device region."""
    poisoned = _poisoned_pfns(machine)
    candidates = []
    for proc in machine.tasks:
        if proc.mm is None:
            continue
        for vma in proc.mm:
            dev = vma.vm_private_data
            if dev is None or getattr(dev, "pdev", None) is None:
                continue
            index = vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT
            base = region_extent(dev, index)
            if base is None:
                continue
            hit = any(base[0] <= p < base[0] + (base[1] >> PAGE_SHIFT) for p in poisoned)
            candidates.append((not hit, dev, index, base))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0])         # stable: first VMA that covers poison, else first VMA
    _, dev, index, (base_pfn, size) = candidates[0]
    return dev, index, base_pfn, size


def _vmas_of(proc, dev, index):
    return [vma for vma in proc.mm if vma.vm_private_data is dev and vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT == index]


def _offset(vma, va: int) -> int:
    return ((vma.vm_pgoff & VFIO_PCI_PGOFF_MASK) << PAGE_SHIFT) + va - vma.vm_start


def _runs(proc, dev, index) -> list[tuple[str, int, int]]:
    """The leaves of ``proc`` over the region as (level, offset, length), PTEs merged into runs."""
    runs, ptes = [], []
    for vma in _vmas_of(proc, dev, index):
        for leaf in proc.mm.pgtable.leaves(vma.vm_start, vma.vm_end):
            off = _offset(vma, leaf.va)
            if leaf.level == "pte":
                ptes.append(off)
            else:
                runs.append((leaf.level, off, leaf.size))
    ptes.sort()
    start = prev = None
    for off in ptes:
        if prev is not None and off == prev + PAGE_SIZE:
            prev = off
            continue
        if start is not None:
            runs.append(("pte", start, prev + PAGE_SIZE - start))
        start = prev = off
    if start is not None:
        runs.append(("pte", start, prev + PAGE_SIZE - start))
    return runs


def leaf_snapshot(machine) -> dict[int, list[tuple[str, int, int]]]:
    """Per pid, the leaves over the region the picture shows, now (one line of the strip)."""
    where = _region_of(machine)
    if where is None:
        return {}
    dev, index = where[0], where[1]
    return {proc.pid: _runs(proc, dev, index) for proc in machine.tasks
            if proc.mm is not None and _vmas_of(proc, dev, index)}


def region_views(machine) -> list[RegionView]:
    """One view per process that maps the region the picture shows."""
    where = _region_of(machine)
    if where is None:
        return []
    dev, index, base_pfn, size = where
    poisoned = [(p - base_pfn) << PAGE_SHIFT for p in _poisoned_pfns(machine)
                if base_pfn <= p < base_pfn + (size >> PAGE_SHIFT)]
    views = []
    for proc in machine.tasks:
        if proc.mm is None or not _vmas_of(proc, dev, index):
            continue
        view = RegionView(f"{dev.name} region {index}, pid {proc.pid} ({proc.comm})", size,
                          _runs(proc, dev, index), poisoned, pid=proc.pid)
        for z in machine.zap_journal:
            vma = z.vma
            if vma.vm_mm is proc.mm and vma.vm_private_data is dev and vma.vm_pgoff >> VFIO_PCI_PGOFF_SHIFT == index:
                view.zapped.append((_offset(vma, z.zapped.va), z.zapped.length))
        views.append(view)
    return views


def region_view(machine) -> RegionView | None:
    """The first process's view (what earlier callers drew)."""
    views = region_views(machine)
    return views[0] if views else None


def _axis_label(n: int) -> str:
    if n and n % (1 << 30) == 0:
        return f"{n >> 30}G"
    if n and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


def _draw(ax, view: RegionView, lo: int, hi: int, label: str, relative: bool = False) -> None:
    ax.broken_barh([(lo, hi - lo)], (0, 1), facecolors=COLOURS["unmapped"])
    thin = (hi - lo) / 600          # runs narrower than about a pixel are widened to stay visible
    zapped = [(max(o, lo), max(min(o + n, hi) - max(o, lo), thin)) for o, n in view.zapped if o < hi and o + n > lo]
    if zapped:                      # drawn under the leaves: what was refaulted shows its leaf
        ax.broken_barh(zapped, (0, 1), facecolors=COLOURS["zapped"], hatch="//", edgecolor="#555555", linewidth=0)
    for level in ("pud", "pmd", "pte"):
        bars = [(max(o, lo), max(min(o + n, hi) - max(o, lo), thin)) for lv, o, n in view.runs
                if lv == level and o < hi and o + n > lo]
        if bars:
            ax.broken_barh(bars, (0, 1), facecolors=COLOURS[level], linewidth=0)
    marks = [p for p in view.poisoned if lo <= p < hi]
    width = max((hi - lo) / 400, PAGE_SIZE)
    if marks:
        ax.broken_barh([(p, width) for p in marks], (-0.35, 0.3), facecolors=COLOURS["poison"])
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.45, 1.05)
    ax.set_yticks([])
    ticks = [lo + (hi - lo) * i // 4 for i in range(5)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([("+" + _axis_label(t - lo) if t > lo else "+0") if relative else _axis_label(t)
                        for t in ticks], fontsize=7)
    ax.set_title(label, fontsize=8)


def _draw_strip(ax, view: RegionView, history: list) -> None:
    """One line per step (top: the first): the leaves of this process over the whole region."""
    n = max(len(history), 1)
    ax.broken_barh([(0, view.size)], (0, n), facecolors=COLOURS["unmapped"])
    thin = view.size / 600
    for row, (_index, _kind, leaves) in enumerate(history):
        y = n - row - 1
        for level in ("pud", "pmd", "pte"):
            bars = [(o, max(length, thin)) for lv, o, length in leaves.get(view.pid, []) if lv == level]
            if bars:
                ax.broken_barh(bars, (y + 0.1, 0.8), facecolors=COLOURS[level], linewidth=0)
    ax.set_xlim(0, view.size)
    ax.set_ylim(0, n)
    ax.set_yticks([n - row - 0.5 for row in range(len(history))])
    ax.set_yticklabels([f"{index} {kind}" for index, kind, _ in history], fontsize=5)
    ax.set_xticks([0, view.size])
    ax.set_xticklabels(["0", _axis_label(view.size)], fontsize=7)
    ax.set_title("leaves after each step", fontsize=8)


def write_png(runs: list["PolicyRun"], path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(r, view) for r in runs for view in (region_views(r.run.machine) or [None])]
    fig, axes = plt.subplots(len(rows), 5, figsize=(19, 1.9 * len(rows) + 1.0), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2, 2, 2, 2]})
    for row, (r, view) in enumerate(rows):
        s = r.summary
        label = f"policy {r.policy}" + (f"\npid {view.pid}" if view is not None else "")
        axes[row][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        if view is None:
            for ax in axes[row]:
                ax.axis("off")
            axes[row][0].text(0.5, 0.5, "no device mapping", ha="center", va="center", transform=axes[row][0].transAxes)
            continue
        focus = view.poisoned[0] if view.poisoned else 0
        g0 = focus - focus % PUD_SIZE
        m0 = focus - focus % PMD_SIZE
        k0 = max(focus - focus % PAGE_SIZE - 8 * PAGE_SIZE, 0)
        _draw(axes[row][0], view, 0, view.size,
              f"{r.policy}: {view.title}: PUD {s['pud']}, PMD {s['pmd']}, PTE {s['pte']}, faults {s['faults']}, "
              f"signals {s['signals']}, blast radius {format_bytes(s['unreachable_bytes'])}")
        _draw(axes[row][1], view, g0, min(g0 + PUD_SIZE, max(view.size, g0 + PMD_SIZE)),
              f"1 GiB at offset {g0:#x}", relative=True)
        _draw(axes[row][2], view, m0, m0 + PMD_SIZE, f"2 MiB at offset {m0:#x}", relative=True)
        _draw(axes[row][3], view, k0, k0 + 16 * PAGE_SIZE, f"16 pages at offset {k0:#x}", relative=True)
        _draw_strip(axes[row][4], view, r.history)
    handles = [Patch(facecolor=COLOURS[k], label=LABELS[k], hatch="//" if k == "zapped" else None)
               for k in ("pud", "pmd", "pte", "unmapped", "zapped", "poison")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.04, 0.06, 1, 0.95 if title else 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
