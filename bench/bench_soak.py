"""Soak: one served device under a mixed load of well-behaved and hostile clients.

`hugepfn serve --profile tiny` runs in its own process for the whole soak (30 s under
`make bench`; `make soak` runs 10 minutes: HUGEPFN_SOAK_SECONDS, HUGEPFN_SOAK_BACKEND).
Meanwhile, in this process:

* two well-behaved clients attach, do a working session (config and register reads and
  writes, a DMA_MAP/UNMAP of a memfd, eventfds wired to MSI-X, a doorbell) and leave,
  over and over; a client refused because another holds the device retries;
* one hostile client cycles through the classes the server must survive: a message
  stopped half way, a msg_size that lies, VERSION with JSON 5000 levels deep, a bad
  major, garbage, reply-type messages, more fds than max_msg_fds, a client that never
  negotiates, and one that floods requests without reading the replies.

Printed: messages answered to the well-behaved clients, their sessions and refusals,
errors they saw (must be 0), hostile clients sent, and the server process's RSS and
open fds at the start and the end (a leak shows as growth).  Figures, no pass/fail.
"""
from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.bench_vfio_user import _stop as stop_server
from hugepfn.abi import vfio_user as wire
from hugepfn.abi.registers import REG_DOORBELL, REG_SCRATCH
from hugepfn.abi.vfio import VFIO_PCI_MSIX_IRQ_INDEX
from hugepfn.abi.vfio_user import Command
from hugepfn.device.control import ControlClient, control_path
from hugepfn.device.vfio_user.transport import send_with_fds
from hugepfn.host.vfio_user import VfioUserClient, VfioUserError, VfioUserProtocolError

SECONDS = float(os.environ.get("HUGEPFN_SOAK_SECONDS", "30"))
BACKEND = os.environ.get("HUGEPFN_SOAK_BACKEND", "python")
REPORT_EVERY = 60.0
RECV_TIMEOUT = 0.5           # --recv-timeout of the soaked server: stalled clients go quickly


class Busy(Exception):
    """The server refused this client because another one holds the device."""


def _proc_figures(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) of the server process."""
    rss = next(int(line.split()[1]) << 10 for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    def __init__(self, path: Path, deadline: float):
        self.path = path
        self.deadline = deadline
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def add(self, **counts) -> None:
        with self.lock:
            self.counts.update(counts)

    # -- well-behaved ----------------------------------------------------------------------
    def good_client(self) -> None:
        guest = os.memfd_create("soak-guest", os.MFD_CLOEXEC)
        os.ftruncate(guest, 1 << 20)
        try:
            while time.monotonic() < self.deadline:
                try:
                    client = VfioUserClient.attach(self.path, timeout=10)
                except (VfioUserProtocolError, ConnectionError, TimeoutError):
                    self.add(refused=1)             # another client holds the device
                    time.sleep(0.01)
                    continue
                try:
                    self.add(messages=self._session(client, guest), sessions=1)
                except (OSError, VfioUserError, VfioUserProtocolError) as exc:
                    with self.lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                finally:
                    client.close()
        finally:
            os.close(guest)

    @staticmethod
    def _session(client: VfioUserClient, guest: int) -> int:
        answered = 2 + client.device.num_regions          # VERSION, GET_INFO, region infos
        client.dma_map(1 << 32, 1 << 20, guest)
        client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 4)
        answered += 2
        for n in range(50):
            client.region_write(0, REG_SCRATCH, n.to_bytes(4, "little"))
            assert client.region_read(0, REG_SCRATCH, 4) == n.to_bytes(4, "little")
            client.config_read(0, 4)
            answered += 3
        client.region_write(0, REG_DOORBELL, (1).to_bytes(4, "little"))
        client.dma_unmap(1 << 32, 1 << 20)
        return answered + 2

    # -- hostile ---------------------------------------------------------------------------
    def hostile_client(self) -> None:
        kinds = [self._half_message, self._lying_size, self._deep_json, self._bad_major, self._garbage,
                 self._reply_type, self._too_many_fds, self._silent, self._non_reader]
        n = 0
        while time.monotonic() < self.deadline:
            kind = kinds[n % len(kinds)]
            try:
                kind()
            except (Busy, OSError, VfioUserProtocolError, TimeoutError):
                self.add(hostile_refused=1)        # the device was busy: it closed us at once
                time.sleep(0.01)
                continue
            self.add(hostile=1, **{kind.__name__.strip("_"): 1})
            n += 1

    def _connect(self, negotiate: bool = True) -> VfioUserClient:
        client = VfioUserClient.connect(self.path, timeout=5)
        if negotiate:
            try:
                client.negotiate()
            except BaseException:
                client.close()
                raise
        return client

    @staticmethod
    def _until_closed(sock: socket.socket, timeout: float) -> None:
        sock.settimeout(timeout)
        try:
            while sock.recv(1 << 16):
                pass
        except (socket.timeout, ConnectionResetError):
            pass

    def _half_message(self):
        with self._connect() as c:
            c.sock.sendall(wire.message(1, Command.REGION_READ, wire.REGION_ACCESS.pack(0, 0, 4))[:20])
            self._until_closed(c.sock, RECV_TIMEOUT + 2)

    def _lying_size(self):
        with self._connect() as c:
            c.sock.sendall(wire.HEADER.pack(1, Command.REGION_READ, 64, 0, 0) + bytes(16))
            self._until_closed(c.sock, RECV_TIMEOUT + 2)

    def _refused_version(self, payload: bytes) -> None:
        """Send a VERSION the server must refuse: an EINVAL reply, then end of stream."""
        with self._connect(negotiate=False) as c:
            c.sock.sendall(wire.message(1, Command.VERSION, payload))
            try:
                reply = c.receive()
            except VfioUserProtocolError:
                raise Busy() from None             # closed without a word: the device was busy
            assert reply.error_no, "a hostile VERSION was accepted"
            self._until_closed(c.sock, 3)

    def _deep_json(self):
        self._refused_version(b"\0\0\0\0" + b'{"capabilities":' + b"[" * 5000 + b"]" * 5000 + b"}\0")

    def _bad_major(self):
        self._refused_version(struct.pack("<HH", 7, 0))

    def _garbage(self):
        with self._connect() as c:
            c.sock.sendall(os.urandom(512))
            self._until_closed(c.sock, RECV_TIMEOUT + 1)

    def _reply_type(self):
        with self._connect() as c:
            c.send(Command.DMA_READ, b"\0" * 16, flags=wire.MSG_TYPE_REPLY)
            c.get_device_info()

    def _too_many_fds(self):
        with self._connect() as c:
            fds = [os.eventfd(0) for _ in range(40)]
            try:
                send_with_fds(c.sock, wire.message(1, Command.DEVICE_GET_INFO, bytes(16)), fds)
                c.receive()
            finally:
                for fd in fds:
                    os.close(fd)

    def _silent(self):
        with self._connect(negotiate=False) as c:
            started = time.monotonic()
            self._until_closed(c.sock, 7)          # closed by the server's VERSION timeout
            if time.monotonic() - started < 1.0:
                raise Busy()

    def _non_reader(self):
        with self._connect() as c:
            c.sock.setblocking(False)
            request = wire.message(1, Command.REGION_READ, wire.REGION_ACCESS.pack(0, 2, 1 << 20))
            try:
                for _ in range(10_000):
                    c.sock.send(request)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            c.sock.setblocking(True)
            poller = select.poll()
            poller.register(c.sock, select.POLLRDHUP)
            poller.poll(5000)                       # the server hangs up on us


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hugepfn-soak-") as tmp:
        os.chmod(tmp, 0o700)
        path = Path(tmp) / "soak.sock"
        log = Path(tmp) / "server.log"
        with open(log, "w") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "hugepfn.cli.main", "serve", "--profile", "tiny",
                                     "--socket", str(path), "--backend", BACKEND,
                                     "--recv-timeout", str(RECV_TIMEOUT)], stdout=sink, stderr=subprocess.STDOUT)
        try:
            while not Path(control_path(path)).exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"server did not start: {log.read_text()}")
                time.sleep(0.05)
            with VfioUserClient.attach(path) as warm:      # warm up, then the baseline
                warm.get_device_info()
            time.sleep(0.2)
            rss0, fds0 = _proc_figures(proc.pid)
            started = time.monotonic()
            load = Load(path, started + SECONDS)
            threads = [threading.Thread(target=load.good_client, daemon=True) for _ in range(2)]
            threads.append(threading.Thread(target=load.hostile_client, daemon=True))
            for t in threads:
                t.start()
            print(f"soak: {BACKEND} backend, profile tiny, {SECONDS:g} s, 2 well-behaved + 1 hostile client",
                  flush=True)
            next_report = started + REPORT_EVERY
            while any(t.is_alive() for t in threads):
                time.sleep(0.5)
                if time.monotonic() >= next_report:
                    rss, fds = _proc_figures(proc.pid)
                    with load.lock:
                        c = dict(load.counts)
                    print(f"  {time.monotonic() - started:5.0f} s: {c.get('messages', 0)} messages, "
                          f"{c.get('sessions', 0)} sessions, {c.get('hostile', 0)} hostile, RSS {rss >> 20} MiB, "
                          f"{fds} fds", flush=True)
                    next_report += REPORT_EVERY
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            rss1, fds1 = _proc_figures(proc.pid)
            with ControlClient(control_path(path)) as control:
                server_view = control.status().get("vfio_user", {})
            alive = proc.poll() is None
        finally:
            stop_server(proc)
        text = log.read_text()
    c = load.counts
    kinds = {k: v for k, v in sorted(c.items())
             if k not in ("messages", "sessions", "refused", "hostile", "hostile_refused")}
    print(f"  well-behaved: {c['messages']} messages answered in {c['sessions']} sessions "
          f"({c['messages'] / elapsed:.0f}/s), refused {c['refused']} times while the device was busy, "
          f"{len(load.errors)} errors")
    for error in load.errors[:5]:
        print(f"    error: {error}")
    print(f"  hostile: {c['hostile']} clients ({json.dumps(kinds)}), {c['hostile_refused']} refused at once")
    print(f"  server says: {server_view.get('clients_refused', '?')} clients refused, "
          f"{text.count('closed the client')} dropped for going over a limit (its log)")
    print(f"  server RSS {rss0 / (1 << 20):.1f} MiB -> {rss1 / (1 << 20):.1f} MiB, "
          f"open fds {fds0} -> {fds1}; alive at the end: {alive}, "
          f"tracebacks in its log: {text.count('Traceback')}")


if __name__ == "__main__":
    main()
