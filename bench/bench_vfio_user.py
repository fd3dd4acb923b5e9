"""vfio-user figures, every available backend side by side in one run.

* trapped 8-byte REGION_READ and REGION_WRITE round trips (latency, and the server's CPU per
  access) through each backend, next to the floor: a plain Python unix-socket echo of the same
  message sizes (blocking recv() and send() in a loop, its own process), measured in the same
  run.  Rounds alternate between the servers so that the machine's load hits each alike.
  Targets (issue 14): the python engine at most 15 us of server CPU per access, its round trip
  within 1.5x of the echo floor, libvfio-user within 1.2x of python (latency) or better.  A
  reference beside them, not a target: a straight-line Python vfio-user server (no engine,
  no checks) driven like the echo floor, the least any Python server costs here;
* bulk bytes/s written through the client's mmap of the memory BAR vs a plain
  memcpy of the same size; target: >= 80 % of memcpy.

Each server runs in its own process (`hugepfn serve`), as it would for QEMU, so the
client and the server do not share an interpreter lock.  Server CPU is the process's own
run time from /proc/PID/task/*/schedstat (nanoseconds; utime/stime are in clock ticks, too
coarse for 1,000 accesses).  Figures only, no asserts.
"""
from __future__ import annotations

import mmap
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hugepfn.abi.registers import REG_SCRATCH
from hugepfn.abi.vfio_user import REGION_ACCESS, Command, message
from hugepfn.device.vfio_user import backends
from hugepfn.host.vfio_user import VfioUserClient

from bench.results import record

ROUNDS = 10             # alternating rounds per server
PER_ROUND = 500         # round trips per server and round
WARMUP = 500
BULK_BYTES = 32 << 20
BULK_PASSES = 8
READ = REGION_ACCESS.pack(REG_SCRATCH, 0, 8)
WRITE = READ + b"\x5a" * 8
# The echo server answers each request with a reply of the size the vfio-user server sends:
# a REGION_READ request is 32 bytes and its reply 40, a REGION_WRITE request 40 and its reply 32.
ECHO_SERVER = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
replies = {32: bytes(40), 40: bytes(32)}
while True:
    request = sock.recv(4096)
    if not request:
        break
    sock.send(replies[len(request)])
"""


# A reference, not a target: the least a Python vfio-user server costs on this machine for a
# trapped access.  It makes the system calls the python engine's loop makes (poll the client and a
# wake eventfd, one recvmsg() of up to 63 bytes that brings the whole request, one send() of the
# reply), straight-line, with none of the engine's checks, dispatch, limits or device model: the
# header unpacked, a bytearray for registers.  Driven by the same plain client as the echo floor,
# in the same rounds, it says how much of the python engine's figure is this machine's
# interpreter and syscalls.
STRAIGHT_LINE_SERVER = """
import os, select, socket, sys
from hugepfn.abi.vfio_user import HEADER, HEADER_SIZE, REGION_ACCESS
sock = socket.socket(fileno=int(sys.argv[1]))
sock.setblocking(False)
registers = bytearray(1 << 16)
poller = select.poll()
poller.register(sock, select.POLLIN)
poller.register(os.eventfd(0), select.POLLIN)
while True:
    poller.poll()
    data, _, _, _ = sock.recvmsg(63, 64)
    if not data:
        break
    msg_id, cmd, size, _, _ = HEADER.unpack_from(data)
    body = data[HEADER_SIZE:size]
    offset, _, count = REGION_ACCESS.unpack_from(body)
    if len(body) > REGION_ACCESS.size:                  # REGION_WRITE: the access, no data
        registers[offset:offset + count] = body[REGION_ACCESS.size:]
        sock.send(HEADER.pack(msg_id, cmd, HEADER_SIZE + REGION_ACCESS.size, 1, 0) + body[:REGION_ACCESS.size])
    else:                                               # REGION_READ: the access and the data
        sock.send(HEADER.pack(msg_id, cmd, HEADER_SIZE + REGION_ACCESS.size + count, 1, 0) + body
                  + registers[offset:offset + count])
"""


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
    """CPU time the process has run, all its threads (schedstat: nanoseconds on the CPU)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:       # a thread that just ended
            pass
    return total / 1e9


class _Plain:
    """A server of ``code`` (the echo floor, or the straight-line reference) over a socketpair,
    in its own process, driven by a plain client: send the request, receive its reply."""

    def __init__(self, code: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()])
        theirs.close()

    def round_trip(self, request: bytes, reply_size: int) -> None:
        self.sock.send(request)
        got = self.sock.recv(4096)
        while len(got) < reply_size:
            more = self.sock.recv(4096)
            if not more:
                raise ConnectionError(f"the plain server ended after {len(got)} of {reply_size} bytes")
            got += more

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(timeout=20)


class _Measured:
    """One server under test: how to do one access, and what it cost."""

    def __init__(self, pid: int, access) -> None:
        self.pid, self.access = pid, access
        self.times: list[float] = []
        self.cpu = 0.0

    def round(self, n: int) -> None:
        access, times, clock = self.access, self.times, time.perf_counter
        cpu = _cpu_seconds(self.pid)
        for _ in range(n):
            start = clock()
            access()
            times.append(clock() - start)
        self.cpu += _cpu_seconds(self.pid) - cpu

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_per_op(self) -> float:
        return self.cpu / len(self.times)


def _alternate(measured: dict[str, _Measured]) -> None:
    for m in measured.values():
        for _ in range(WARMUP):
            m.access()
    for _ in range(ROUNDS):
        for m in measured.values():
            m.round(PER_ROUND)


def _trapped(clients: dict[str, tuple[VfioUserClient, int]], echo: _Plain, straight: _Plain,
             what: str) -> dict[str, _Measured]:
    """Round trips of one trapped 8-byte access per server, alternating with the echo floor and
    the straight-line reference."""
    cmd, body, echo_request, echo_reply = (
        (Command.REGION_READ, READ, bytes(32), 40) if what == "read" else (Command.REGION_WRITE, WRITE, bytes(40), 32))
    request = message(0, cmd, body)                     # what VfioUserClient sends, byte for byte
    measured = {"echo floor": _Measured(echo.proc.pid, lambda: echo.round_trip(echo_request, echo_reply)),
                "straight-line": _Measured(straight.proc.pid, lambda: straight.round_trip(request, echo_reply))}
    for name, (client, pid) in clients.items():
        measured[name] = _Measured(pid, lambda c=client: c.request(cmd, body))
    _alternate(measured)
    for name, (client, _) in clients.items():
        assert len(client.request(cmd, body).payload) == (24 if what == "read" else 16), name
    return measured


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


def _report(what: str, measured: dict[str, _Measured]) -> None:
    label = f"8-byte REGION_{what.upper()}"
    print(f"trapped {label} round trips ({ROUNDS} alternating rounds of {PER_ROUND}, each server in its own "
          "process):")
    for name, m in measured.items():
        p99 = sorted(m.times)[int(len(m.times) * 0.99)]
        print(f"  {name:13s} median {m.median * 1e6:7.1f} us   p99 {p99 * 1e6:7.1f} us   "
              f"{1 / statistics.mean(m.times):9.0f} round trips/s   server CPU {m.cpu_per_op * 1e6:5.1f} us/op")
    floor = measured["echo floor"]
    python = measured.get("python")
    if python is not None:
        cpu = python.cpu_per_op * 1e6
        record(f"vfio-user python engine: server CPU per {label}", f"{cpu:.1f} us (echo floor: "
               f"{floor.cpu_per_op * 1e6:.1f} us)", "<= 15 us", cpu <= 15)
        ratio = python.median / floor.median
        record(f"vfio-user python round trip ({label}) vs a plain unix-socket echo (same run)",
               f"{ratio:.2f}x ({python.median * 1e6:.1f} vs {floor.median * 1e6:.1f} us)", "<= 1.5x", ratio <= 1.5)
    straight = measured["straight-line"]
    print(f"  (straight-line: the least a Python vfio-user server costs here, a reference: "
          f"{straight.cpu_per_op * 1e6:.1f} us server CPU, {straight.median / floor.median:.2f}x the echo floor)")
    record(f"reference, not a target: a straight-line Python vfio-user server ({label}, same run)",
           f"{straight.cpu_per_op * 1e6:.1f} us server CPU; {straight.median / floor.median:.2f}x the echo floor",
           "(what any Python server costs here)", None)
    lvu = measured.get("libvfio-user")
    if python is not None and lvu is not None:
        ratio = lvu.median / python.median
        print(f"  libvfio-user / python latency: {ratio:.2f}x")
        record(f"vfio-user latency ({label}): libvfio-user / python", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2)


def main() -> None:
    clients: dict[str, tuple[VfioUserClient, int]] = {}
    procs = []
    bulk = None
    with tempfile.TemporaryDirectory(prefix="hugepfn-bench-") as tmp:
        os.chmod(tmp, 0o700)
        echo, straight = _Plain(ECHO_SERVER), _Plain(STRAIGHT_LINE_SERVER)
        try:
            for name, choice in backends.available_backends().items():
                if not choice.available:
                    print(f"{name:13s} skipped: {choice.reason}")
                    continue
                path = Path(tmp) / f"{name}.sock"
                proc = _start_server(name, path)
                procs.append(proc)
                clients[name] = (VfioUserClient.attach(path), proc.pid)
            for what in ("read", "write"):
                _report(what, _trapped(clients, echo, straight, what))
            if clients:
                bulk = _bulk(next(iter(clients.values()))[0])
        finally:
            for client, _ in clients.values():
                client.close()
            for proc in procs:
                _stop(proc)
            echo.close()
            straight.close()

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
