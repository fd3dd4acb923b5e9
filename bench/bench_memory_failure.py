"""Memory-failure figures (issue 3 "Numbers"):

* memory_failure_pfn per call with 10,000 registered address spaces, 1,000 processes and 10,000 VMAs
  (VMAs spread over the devices, and the worst case where all VMAs map the poisoned device), and
  at 2,500 / 5,000 / 10,000 VMAs to show the growth;
* huge_fault's "does [pfn, pfn + 2^order) hold poison" check with 1,000,000 poisoned pfns, next to
  the sorted list the PoisonSet used before (same run), and its insert, remove and bulk load;
* re-populating a 1 GiB range after one poison under hard-offline (faults, time) vs split;
* the trade-off table of docs/poison-policies.md: an 8 GiB BAR, PUD-mapped, with 1, 10 and 1,000
  poisoned pages under each policy.
Prints figures and records the issue 14 targets (memory_failure_pfn < 10 ms with 10,000 signalled
VMAs, CPU time per call; poison set insert/remove < 20 us, bulk load < 1 s, query no slower);
never asserts timing."""
from __future__ import annotations

import random
import time
import timeit
from bisect import bisect_left

from hugepfn.host.drivers import PciBar
from hugepfn.host.machine import Machine
from hugepfn.host.memory_failure import MF_ACTION_REQUIRED, PoisonSet, memory_failure_of
from hugepfn.host.memory_failure.summary import format_bytes
from hugepfn.host.mm.constants import PAGE_SIZE, PMD_ORDER, PUD_ORDER, PUD_SIZE

from bench.results import record

MIB, GIB = 1 << 20, 1 << 30
VA0 = 0x100000000000


def _per_call(fn, min_time: float = 0.3, timer_fn=time.perf_counter) -> float:
    """Seconds per call of fn(), the best of 3 repeats of an auto-sized loop."""
    return _per_call_runs(fn, min_time, timer_fn)[0]


def _per_call_runs(fn, min_time: float = 0.3, timer_fn=time.perf_counter, repeats: int = 3) -> tuple[float, float]:
    """(best, median) seconds per call of fn() over ``repeats`` repeats of an auto-sized loop
    (timeit's: the cyclic collector is off while it times)."""
    timer = timeit.Timer(fn, timer=timer_fn)
    n, _ = timer.autorange()
    n = max(1, int(n * min_time / 0.2))
    runs = sorted(timer.repeat(repeats, n))
    return runs[0] / n, runs[len(runs) // 2] / n


def registry_machine(spaces: int, procs: int, early_kill: int) -> tuple[Machine, int]:
    """``spaces`` vfio-pci devices (one 2 MiB BAR each, registered) and ``procs`` processes;
    returns the machine and a pfn of device 0."""
    m = Machine(kernel="7.0", dyndbg=False, sysctl={"vm.memory_failure_early_kill": early_kill})
    for p in range(procs):
        m.create_process(1000 + p, f"vmm{p}")
    for i in range(spaces):
        dev = m.add_device(f"d{i}", "vfio-pci", f"{i >> 16 & 0xff:04x}:{i >> 8 & 0xff:02x}:{i >> 3 & 0x1f:02x}.{i & 7}",
                           bars=[PciBar(0, 0x100000000000 + i * 2 * MIB, 2 * MIB)])
        assert m.register_pfn_address_space(dev.pfn_address_space(0)) == 0
    return m, (0x100000000000 >> 12) + 0x7


def add_vmas(m: Machine, first: int, last: int, procs: int, spaces: int, all_on_first: bool) -> None:
    """VMAs first..last-1: VMA k belongs to process k % procs and maps device 0 or device k % spaces."""
    for k in range(first, last):
        p, j = k % procs, k // procs
        d = 0 if all_on_first else k % spaces
        assert m.mmap(1000 + p, f"d{d}", 0, 0, 2 * MIB, VA0 + j * 4 * MIB) == 0


def bench_memory_failure_pfn() -> None:
    print("memory_failure_pfn per call (10,000 registered spaces, 1,000 processes):")
    for all_on_first, early_kill, what in ((False, 1, "VMAs spread over the devices, early kill on"),
                                           (True, 0, "all VMAs map the poisoned device, nobody selected"),
                                           (True, 1, "all VMAs map the poisoned device, all 1,000 selected")):
        t0 = time.perf_counter()
        m, pfn = registry_machine(10_000, 1_000, early_kill)
        setup = time.perf_counter() - t0
        mf = memory_failure_of(m)
        journal = m.tasks.journal
        threads = list(m.tasks.threads.values())
        done = 0
        for vmas in (2_500, 5_000, 10_000):
            add_vmas(m, done, vmas, 1_000, 10_000, all_on_first)
            done = vmas

            # Each call starts from the same state: what one call leaves goes, within the timed
            # call (log lines, journal, outcomes, events, trace, and every thread's received and
            # pending signals, as if each had run its handler).  Kept, the received lists grew by
            # 10,000 signals a call, and each call paid page faults for memory never used before.
            def call():
                mf.memory_failure(pfn, 0)
                m.klog.clear()
                journal.clear()
                mf.outcomes.clear()
                mf.events.clear()
                mf.trace.lines.clear()
                for thread in threads:
                    thread.received.clear()
                    thread.pending.clear()
            mf.memory_failure(pfn, 0)
            entries = len(mf.outcomes[-1].tokill)
            per = _per_call(call, 0.2)
            # the recorded case takes the best of 7 repeats (this VM's speed moves for seconds
            # at a time) and prints their median beside it
            recorded = all_on_first and early_kill and vmas == 10_000
            cpu, cpu_median = _per_call_runs(call, 0.2, time.process_time, 7 if recorded else 3)
            print(f"  {what:<52} VMAs {vmas:>6,}: {per * 1e3:7.3f} ms/call ({cpu * 1e3:.3f} ms CPU), "
                  f"{entries:>6,} signals per call")
        if all_on_first and early_kill:
            record("memory_failure_pfn, 10,000 VMAs of 1,000 processes all signalled",
                   f"{cpu * 1e3:.2f} ms CPU (best of 7; median {cpu_median * 1e3:.2f} ms; {per * 1e3:.2f} ms wall)",
                   "< 10 ms", cpu < 10e-3)
        print(f"  (machine with 10,000 devices and registrations built in {setup:.1f} s)")


class _SortedList:
    """The PoisonSet's range query before issue 14 (bisect on a sorted list): the reference."""
    __slots__ = ("s",)

    def __init__(self, pfns) -> None:
        self.s = sorted(pfns)

    def any_in(self, lo: int, hi: int) -> bool:
        s = self.s
        i = bisect_left(s, lo)
        return i < len(s) and s[i] < hi


def bench_poison_check() -> None:
    rng = random.Random(3)
    base = 0x4000000
    pfns = rng.sample(range(base, base + (64 << 30 >> 12)), 1_000_000)      # 1M pages of a 64 GiB region
    ps = PoisonSet()
    t0 = time.perf_counter()
    ps.update(pfns)
    load = time.perf_counter() - t0
    before = _SortedList(pfns)
    clean = next(p for p in range(base, base + (1 << 30), 1 << PMD_ORDER) if not ps.any_in(p, p + (1 << PMD_ORDER)))
    per_pmd_hit = _per_call(lambda: ps.any_in(base, base + (1 << PMD_ORDER)))
    per_pmd_clean = _per_call(lambda: ps.any_in(clean, clean + (1 << PMD_ORDER)))
    old_hit = _per_call(lambda: before.any_in(base, base + (1 << PMD_ORDER)))
    old_clean = _per_call(lambda: before.any_in(clean, clean + (1 << PMD_ORDER)))
    per_pud = _per_call(lambda: ps.any_in(base, base + (1 << PUD_ORDER)))
    per_pte = _per_call(lambda: (base + 5) in ps)
    fresh = [p for p in rng.sample(range(base, base + (64 << 30 >> 12)), 20_000) if p not in ps]
    t0 = time.perf_counter()
    for p in fresh:
        ps.add(p)
    insert = (time.perf_counter() - t0) / len(fresh)
    t0 = time.perf_counter()
    for p in fresh:
        ps.discard(p)
    remove = (time.perf_counter() - t0) / len(fresh)
    print("poison-range check in huge_fault with 1,000,000 poisoned pfns (bulk load "
          f"{load * 1e3:.0f} ms):")
    print(f"  [pfn, pfn + 2^9)  holding poison: {per_pmd_hit * 1e6:.2f} us; clean: {per_pmd_clean * 1e6:.2f} us "
          f"(sorted list as before: {old_hit * 1e6:.2f} / {old_clean * 1e6:.2f} us)")
    print(f"  [pfn, pfn + 2^18): {per_pud * 1e6:.2f} us;  order-0 membership: {per_pte * 1e6:.2f} us")
    print(f"  insert {insert * 1e6:.2f} us, remove {remove * 1e6:.2f} us at 1,000,000 pfns")
    record("host poison set: bulk load of 10**6 pfns", f"{load * 1e3:.0f} ms", "< 1 s", load < 1)
    record("host poison set: insert at 10**6 pfns", f"{insert * 1e6:.2f} us", "< 20 us", insert < 20e-6)
    record("host poison set: remove at 10**6 pfns", f"{remove * 1e6:.2f} us", "< 20 us", remove < 20e-6)
    now, then = max(per_pmd_hit, per_pmd_clean), max(old_hit, old_clean)
    record("host poison set: [pfn, pfn + 2^9) query vs the sorted list (same run)",
           f"{now * 1e6:.2f} vs {then * 1e6:.2f} us", "unchanged (within 10 %) or better", now <= then * 1.1)


def nvgrace(policy: str, size: int = 8 * GIB) -> Machine:
    m = Machine(kernel="7.0", policy=policy, dyndbg=False)
    m.create_process(4242, "qemu", [4242, 4243])
    m.add_device("gpu", "nvgrace-gpu", "0009:01:00.0", usemem=(0x4000000000, size))
    assert m.mmap(4242, "gpu", 4, 0, size, VA0) == 0
    m.touch_range(4242, VA0, VA0 + size, PUD_SIZE)
    return m


def repopulate(m: Machine, start: int, end: int) -> tuple[int, int, float]:
    """Touch every page of [start, end) like a guest would, carrying on past poisoned pages.
    Returns (faults, signals, seconds)."""
    mm = m.tasks.process(4242).mm
    f0, s0 = mm.nr_faults, len(m.tasks.journal)
    t0 = time.perf_counter()
    addr = start
    thread = m.tasks.thread(4242)
    while addr < end:
        out = m.touch_range(4242, addr, end)
        if out.stopped_at is None:
            break
        thread.handle_signals()
        addr = out.stopped_at + PAGE_SIZE
    return mm.nr_faults - f0, len(m.tasks.journal) - s0, time.perf_counter() - t0


def bench_repopulate() -> None:
    print("re-populating the poisoned 1 GiB after one poison (every 4 KiB touched):")
    for policy in ("hard-offline", "split"):
        m = nvgrace(policy, 2 * GIB)
        pfn = 0x4000000 + (GIB >> 12) + 0x123
        memory_failure_of(m).memory_failure(pfn, MF_ACTION_REQUIRED, m.tasks.thread(4242))
        m.tasks.thread(4242).handle_signals()
        faults, signals, secs = repopulate(m, VA0 + GIB, VA0 + 2 * GIB)
        counts = m.tasks.process(4242).mm.pgtable.counts()
        print(f"  {policy:<12}: {faults:>4} faults ({faults - 1} for clean pages, 1 VM_FAULT_HWPOISON on the "
              f"poisoned one), {signals} signal, {secs * 1e3:.1f} ms; leaves PUD/PMD/PTE {counts}")


def tradeoff_row(policy: str, n: int) -> dict:
    m = nvgrace(policy)
    mf = memory_failure_of(m)
    rng = random.Random(n)
    pfns = sorted(rng.sample(range(0x4000000, 0x4000000 + (8 * GIB >> 12)), n))
    thread = m.tasks.thread(4242)
    for pfn in pfns:
        mf.hardware.poison(pfn)
    t0 = time.perf_counter()
    for pfn in pfns:
        mf.memory_failure(pfn, MF_ACTION_REQUIRED, thread)
        thread.handle_signals()
    report_secs = time.perf_counter() - t0
    report_signals = len(m.tasks.journal)
    after_report = m.tasks.process(4242).mm.pgtable.counts()
    blast = sum(z.zapped.length for out in mf.outcomes for z in out.zapped)
    faults, touch_signals, secs = repopulate(m, VA0, VA0 + 8 * GIB)
    return {"policy": policy, "n": n, "after_report": after_report, "after": m.tasks.process(4242).mm.pgtable.counts(),
            "faults": faults, "blast": blast, "report_signals": report_signals, "touch_signals": touch_signals,
            "report_ms": report_secs * 1e3, "touch_s": secs}


def bench_tradeoff() -> None:
    print("trade-off, 8 GiB BAR PUD-mapped (8 PUDs), n poisoned pages reported (MF_ACTION_REQUIRED from the vCPU),")
    print("then every page touched again (poisoned pages are consumed / fault once each):")
    print("| poisoned | policy | leaves after report PUD/PMD/PTE | faults to repopulate | leaves after PUD/PMD/PTE "
          "| bytes unreachable (blast radius) | signals: reports + touches | time to repopulate |")
    print("|---:|---|---|---:|---|---:|---|---:|")
    for n in (1, 10, 1000):
        for policy in ("upstream", "hard-offline", "split"):
            r = tradeoff_row(policy, n)
            print(f"| {n:,} | {policy} | {'/'.join(map(str, r['after_report']))} | {r['faults']:,} | "
                  f"{'/'.join(map(str, r['after']))} | {format_bytes(r['blast'])} | "
                  f"{r['report_signals']:,} + {r['touch_signals']:,} | {r['touch_s']:.2f} s |", flush=True)


def main() -> None:
    bench_poison_check()
    bench_repopulate()
    bench_memory_failure_pfn()
    bench_tradeoff()


if __name__ == "__main__":
    main()
