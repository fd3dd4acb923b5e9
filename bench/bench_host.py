"""Host fault-model figures (issue 2 "Numbers", issue 14 item 2): first-touch faults/s through the
full cascade (PTE, PMD, PUD); the page table's RSS per leaf at each level and touching every page
of a 64 GiB mapping without huge pages (16 Mi PTEs), and every 2 MiB of a 1 TiB PUD-mapped BAR
(time and peak RSS, each in a fresh subprocess); zapping one 4 KiB inside a PUD with 1,000 VMAs
mapping the device.  Prints figures and records them for the targets table; never asserts timing."""
from __future__ import annotations

import subprocess
import sys
import time

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.mm.constants import PAGE_SIZE, PMD_SIZE, PUD_SIZE

from bench.results import record

TIB = 1 << 40
BAR_PHYS = 0x200000000000          # 32 TiB, 1 GiB aligned


def _machine(bar_size: int, dyndbg: bool = False) -> Machine:
    m = Machine(kernel="7.0", arch="x86_64", thp="always", dyndbg=dyndbg)
    m.create_process(4242, "qemu")
    m.add_device("gpu", bars=[PciBar(0, BAR_PHYS, bar_size)])
    return m


def faults_per_second(level: str, dyndbg: bool = False) -> tuple[float, int, float]:
    """Map so that faults resolve at ``level`` and touch one address per leaf.  Returns faults
    per CPU-second of this process (robust to other load on the machine), the number of faults,
    and faults per wall-clock second."""
    if level == "pte":
        size, va, stride = 256 << 20, 0x7f0000001000, PAGE_SIZE        # VA misaligned by a page
    elif level == "pmd":
        size, va, stride = 64 << 30, 0x7e0000200000, PMD_SIZE          # 2 MiB but not 1 GiB aligned
    else:
        size, va, stride = 32 * TIB, 0x400000000000, PUD_SIZE          # 1 GiB aligned
    m = _machine(max(size, PUD_SIZE), dyndbg)
    assert m.mmap(4242, "gpu", 0, 0, size, va) == 0
    access = m.access
    addrs = range(va, va + size - stride + 1, stride)
    c0, t0 = time.process_time(), time.perf_counter()
    for a in addrs:
        access(4242, a)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    levels = m.summary()["4242"]
    assert levels[level] == len(addrs), levels
    return len(addrs) / cpu, len(addrs), len(addrs) / wall


TOUCH_CHILD = r"""
import time
from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
m = Machine(kernel="7.0", arch="x86_64", thp="always", dyndbg=False)
m.create_process(4242, "qemu")
m.add_device("gpu", bars=[PciBar(0, 0x200000000000, 1 << 40)])
assert m.mmap(4242, "gpu", 0, 0, 1 << 40, 0x400000000000) == 0
t0 = time.perf_counter()
r = m.touch_range(4242, 0x400000000000, 0x400000000000 + (1 << 40), stride=2 << 20)
dt = time.perf_counter() - t0
assert r.accesses == 1 << 19 and not r.signals, r
s = m.summary()["4242"]
# VmHWM, not ru_maxrss: ru_maxrss survives fork+exec, so it would report the parent's peak
# (make bench runs the device benchmark, with its 1M poison ranges, in the same parent first).
hwm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(dt * 1000, hwm_kib / 1024, r.accesses, r.faults, s["pud"])
"""


def touch_1tib() -> tuple[float, float, int, int, int]:
    out = subprocess.run([sys.executable, "-c", TOUCH_CHILD], capture_output=True, text=True, check=True).stdout
    ms, rss, accesses, faults, puds = out.split()
    return float(ms), float(rss), int(accesses), int(faults), int(puds)


# One level's leaves in a fresh process: RSS before and after populating them (VmRSS, so the
# interpreter and the machine are not counted), the peak (VmHWM) and the time of the populating.
# A few hundred KiB of PMD/PUD tables are within RSS noise (freed heap is reused), so for those
# levels tracemalloc also counts the bytes allocated and still live; the larger figure is used.
LEAVES_CHILD = r"""
import sys, time, tracemalloc
from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.mm.constants import MADV_NOHUGEPAGE
level, size, va = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) * 1024
m = Machine(kernel="7.0", arch="x86_64", dyndbg=False)
m.create_process(4242, "qemu")
m.add_device("gpu", bars=[PciBar(0, 0x200000000000, max(size, 1 << 30))])
assert m.mmap(4242, "gpu", 0, 0, size, va) == 0
if level == "pte":      # huge pages disabled as on the real kernel: the THP sysfs mode does not
    assert m.madvise(4242, va, size, MADV_NOHUGEPAGE) == 0      # gate pfnmaps on 7.x, the VMA flag does
traced = level != "pte"         # tracemalloc would slow the timed 16 Mi PTE touch
if traced:
    tracemalloc.start()
rss0 = status("VmRSS")
stride = {"pte": 4096, "pmd": 2 << 20, "pud": 1 << 30}[level]
t0, c0 = time.perf_counter(), time.process_time()
r = m.touch_range(4242, va, va + size, stride=stride)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
assert not r.signals, r
grown = status("VmRSS") - rss0
if traced:
    grown = max(grown, tracemalloc.get_traced_memory()[0])
leaves = m.summary()["4242"][level]
print(dt, cpu, grown, status("VmHWM"), leaves)
"""
LEAF_SETUPS = {"pte": (64 << 30, 0x7f0000000000),      # 16 Mi PTEs, huge pages disabled (MADV_NOHUGEPAGE)
               "pmd": (64 << 30, 0x7e0000200000),      # 32,768 PMD leaves (2 MiB, not 1 GiB aligned)
               "pud": (32 * TIB, 0x400000000000)}      # 32,768 PUD leaves


def leaves_in_child(level: str) -> tuple[float, float, int, int, int]:
    """(seconds, CPU seconds, bytes grown, peak RSS, leaves) of populating one level's leaves."""
    size, va = LEAF_SETUPS[level]
    out = subprocess.run([sys.executable, "-c", LEAVES_CHILD, level, str(size), str(va)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3]), int(out[4])


def bench_leaves() -> None:
    for level in ("pte", "pmd", "pud"):
        secs, cpu, grown, hwm, leaves = leaves_in_child(level)
        if not leaves:
            print(f"{level.upper()} leaves: none populated (the setup no longer makes {level} leaves)")
            record(f"page table RSS per {level.upper()} leaf", "no leaves", "<= 16 B" if level == "pte" else "<= 64 B",
                   False)
            continue
        per_leaf = grown / leaves
        limit = 16 if level == "pte" else 64
        print(f"{level.upper()} leaves: {leaves:,} populated in {secs:.2f} s ({cpu:.2f} s CPU); memory "
              f"+{grown / 2**20:.2f} MiB = {per_leaf:.1f} bytes per leaf, peak RSS {hwm / 2**20:.1f} MiB  "
              f"target <= {limit} bytes per leaf")
        record(f"page table RSS per {level.upper()} leaf ({leaves:,} leaves)", f"{per_leaf:.1f} B",
               f"<= {limit} B", per_leaf <= limit)
        if level == "pte":
            print(f"  touch_range over {leaves:,} PTEs (64 GiB, huge pages disabled): {secs:.2f} s wall, "
                  f"peak RSS {hwm / 2**20:.1f} MiB  target < 16 s, < 300 MiB")
            record("touch_range over 16 Mi PTEs (64 GiB, no huge pages): time", f"{secs:.2f} s ({cpu:.2f} s CPU)",
                   "< 16 s", secs < 16)
            record("touch_range over 16 Mi PTEs: peak RSS of the process", f"{hwm / 2**20:.0f} MiB", "< 300 MiB",
                   hwm < 300 << 20)


def zap_with_1000_vmas(disjoint: bool) -> tuple[float, int]:
    """1,000 VMAs (10 processes x 100) map the device, every one PUD-populated; zap 4 KiB.
    ``disjoint``: each VMA maps its own GiB (one is hit); else all map the same GiB (all are hit)."""
    m = Machine(kernel="7.0", arch="x86_64", thp="always", dyndbg=False)
    m.add_device("gpu", bars=[PciBar(0, BAR_PHYS, TIB)])
    n = 0
    for p in range(10):
        pid = 1000 + p
        m.create_process(pid, f"p{p}")
        for i in range(100):
            offset = (n % 1024) * PUD_SIZE if disjoint else 0
            va = 0x100000000000 + i * PUD_SIZE
            assert m.mmap(pid, "gpu", 0, offset, PUD_SIZE, va) == 0
            assert m.access(pid, va).leaf.level == "pud"
            n += 1
    dev = m.device("gpu")
    best = None
    for _ in range(5):          # re-populate and zap again: best of five (the machine is shared)
        for proc in m.tasks:
            for vma in proc.mm:
                m.access(proc.pid, vma.vm_start)
        t0 = time.perf_counter()
        zapped = dev.zap(0x5000, PAGE_SIZE)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best * 1000, len(zapped)


FAULT_RUNS = 7


def main() -> None:
    # The best of FAULT_RUNS runs, per CPU-second of this process: the model's own cost.  This
    # VM's speed swings by up to 2x for seconds at a time (the same code measured minutes apart:
    # 99k..204k PMD faults/s), so runs back to back often all land in one slow spell: the levels
    # take turns, spreading each level's runs over the whole measurement, and the median is
    # printed beside the best (timeit's rule: the lowest time is the model, the rest is noise).
    import os
    import statistics
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    levels = ("pte", "pmd", "pud")
    by_level: dict[str, list] = {level: [] for level in levels}
    for _ in range(FAULT_RUNS):         # the levels take turns, so that a slow spell hits all alike
        for level in levels:
            by_level[level].append(faults_per_second(level))
    for level in levels:
        runs = by_level[level]
        rate, n, wall = max(r[0] for r in runs), runs[0][1], max(r[2] for r in runs)
        median = statistics.median(r[0] for r in runs)
        rate_dbg = max(faults_per_second(level, dyndbg=True)[0] for _ in range(3))
        print(f"{level.upper()} first-touch faults: {rate:>10,.0f}/s per CPU-second, best of {FAULT_RUNS} "
              f"(median {median:,.0f}/s; {wall:,.0f}/s wall; {n} faults; with dyndbg log lines: "
              f"{rate_dbg:,.0f}/s)  target >= 200,000/s per level")
        record(f"{level.upper()} first-touch faults through the cascade",
               f"{rate:,.0f}/s per CPU-s (best of {FAULT_RUNS}; median {median:,.0f}/s)",
               ">= 200,000/s", rate >= 200_000)
    bench_leaves()
    runs = [touch_1tib() for _ in range(3)]
    ms, rss, accesses, faults, puds = min(runs)
    print(f"touch every 2 MiB of a 1 TiB PUD-mapped BAR: {ms:.1f} ms, peak RSS {rss:.1f} MiB "
          f"({accesses} accesses, {faults} faults, {puds} PUD leaves)  target < 50 ms, < 100 MiB")
    record("touch every 2 MiB of a 1 TiB PUD-mapped BAR", f"{ms:.1f} ms, peak {rss:.0f} MiB", "< 50 ms, < 100 MiB",
           ms < 50 and rss < 100)
    for disjoint in (True, False):
        ms, hit = zap_with_1000_vmas(disjoint)
        what = "each VMA its own GiB" if disjoint else "all VMAs the same GiB"
        print(f"zap 4 KiB inside a PUD, 1,000 VMAs map the device ({what}): {ms:.2f} ms, "
              f"{hit} PUD leaves cleared  target < 5 ms")
        record(f"zap 4 KiB inside a PUD, 1,000 VMAs ({what})", f"{ms:.2f} ms", "< 5 ms", ms < 5)


if __name__ == "__main__":
    main()
