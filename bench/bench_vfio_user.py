"""vfio-user figures, every available backend side by side in one run.

* trapped 8-byte REGION_READ round trips (latency and ops/s) through each backend;
  target: the python backend within 1.5x of libvfio-user's latency;
* bulk bytes/s written through the client's mmap of the memory BAR vs a plain
  memcpy of the same size; target: >= 80 % of memcpy.

Each server runs in its own process (`hugepfn serve`), as it would for QEMU, so the
client and the server do not share an interpreter lock.  Figures only, no asserts.
"""
from __future__ import annotations

import mmap
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hugepfn.abi.registers import REG_SCRATCH
from hugepfn.abi.vfio_user import REGION_ACCESS, Command
from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient

from bench.results import record

ROUND_TRIPS = 5000
WARMUP = 500
BULK_BYTES = 32 << 20
BULK_PASSES = 8


def _start_server(backend: str, socket_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hugepfn.cli.main", "serve", "--profile", "tiny",
                             "--socket", str(socket_path), "--backend", backend],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{backend} server did not start")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    """user+system CPU time of a process (load-independent cost of serving)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round_trips(client: VfioUserClient) -> list[float]:
    """Latency of each 8-byte REGION_READ of a trapped register (BAR0 scratch)."""
    request = REGION_ACCESS.pack(REG_SCRATCH, 0, 8)
    times = []
    clock = time.perf_counter
    for n in range(WARMUP + ROUND_TRIPS):
        start = clock()
        reply = client.request(Command.REGION_READ, request)
        end = clock()
        if n >= WARMUP:
            times.append(end - start)
    assert len(reply.payload) == 24
    return times


def _bulk(client: VfioUserClient) -> tuple[float, float]:
    """(mmap path bytes/s, memcpy bytes/s), best of BULK_PASSES after a warm-up pass."""
    [area] = client.map_region(2)[:1]
    size = min(BULK_BYTES, area.size)
    source = os.urandom(1 << 20) * (size >> 20)
    target = mmap.mmap(-1, size)                       # plain anonymous memory for memcpy

    best = {"mmap": float("inf"), "memcpy": float("inf")}
    destinations = {"mmap": area.mapping, "memcpy": target}
    for dest in destinations.values():
        dest[0:size] = source                          # warm-up: fault the pages in
    for _ in range(BULK_PASSES):                       # interleaved, so load hits both alike
        for name, dest in destinations.items():
            start = time.perf_counter()
            dest[0:size] = source
            best[name] = min(best[name], time.perf_counter() - start)
    mmap_rate, memcpy_rate = size / best["mmap"], size / best["memcpy"]
    target.close()
    assert client.region_read(2, area.offset + size - 8, 8) == source[size - 8:size]   # same bytes
    return mmap_rate, memcpy_rate


def main() -> None:
    results = {}
    server_cpu = {}
    bulk = None
    with tempfile.TemporaryDirectory(prefix="hugepfn-bench-") as tmp:
        os.chmod(tmp, 0o700)
        for name, choice in backends.available_backends().items():
            if not choice.available:
                print(f"{name:13s} skipped: {choice.reason}")
                continue
            path = Path(tmp) / f"{name}.sock"
            proc = _start_server(name, path)
            try:
                with VfioUserClient.attach(path) as client:
                    cpu_before = _cpu_seconds(proc.pid)
                    results[name] = _round_trips(client)
                    server_cpu[name] = (_cpu_seconds(proc.pid) - cpu_before) / (WARMUP + ROUND_TRIPS)
                    if bulk is None:
                        bulk = _bulk(client)
            finally:
                _stop(proc)

    print(f"trapped 8-byte REGION_READ round trips ({ROUND_TRIPS} each, server in its own process):")
    for name, times in results.items():
        med = statistics.median(times)
        p99 = sorted(times)[int(len(times) * 0.99)]
        print(f"  {name:13s} median {med * 1e6:7.1f} us   p99 {p99 * 1e6:7.1f} us   "
              f"{1 / statistics.mean(times):9.0f} round trips/s   server CPU {server_cpu[name] * 1e6:5.1f} us/op")
    if "python" in results:
        cpu = server_cpu["python"] * 1e6
        record("vfio-user python engine: server CPU per 8-byte REGION_READ", f"{cpu:.1f} us", "<= 15 us", cpu <= 15)
    record("vfio-user round trip vs a plain unix-socket echo (same run)", "no echo floor in this bench yet",
           "<= 1.5x", None)
    if "python" in results and "libvfio-user" in results:
        ratio = statistics.median(results["python"]) / statistics.median(results["libvfio-user"])
        verdict = "meets" if ratio <= 1.5 else "misses"
        print(f"  python / libvfio-user latency: {ratio:.2f}x  ({verdict} the 1.5x target)")
        record("vfio-user latency: python / libvfio-user", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)
        record("vfio-user latency: libvfio-user / python", f"{1 / ratio:.2f}x", "<= 1.2x", 1 / ratio <= 1.2)
    if bulk is not None:
        mmap_rate, memcpy_rate = bulk
        ratio = mmap_rate / memcpy_rate
        verdict = "meets" if ratio >= 0.8 else "misses"
        print(f"bulk write of {BULK_BYTES >> 20} MiB: mmap of the BAR {mmap_rate / 1e9:6.2f} GB/s, "
              f"memcpy {memcpy_rate / 1e9:6.2f} GB/s -> {ratio * 100:.0f} % ({verdict} the 80 % target)")
        record("bulk write through the client's mmap of the BAR vs memcpy", f"{ratio * 100:.0f} %", ">= 80 %",
               ratio >= 0.8)


if __name__ == "__main__":
    main()
