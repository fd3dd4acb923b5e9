"""Fuzz: >= 100,000 hypothesis-generated messages per run against a live server.

Two generators:

* structured-but-hostile: a valid header around a payload built for its command,
  with every field drawn from boundary values (0, 1, sizes +-1, 2**32-1, 2**64-1)
  or at random, and sometimes a payload of random bytes.  They are pipelined in
  batches over the socket; every one must get exactly one reply, in order, with
  its msg_id and cmd, either a success or a header-only error.
* raw bytes after a valid VERSION, on a fresh connection each: the server replies,
  waits for more, or hangs up, and must then accept the next client.

Afterwards the server must still answer correctly (reads, writes, region info
with its fd).
"""
from __future__ import annotations

import json
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugepfn.device.vfio_user import wire
from hugepfn.device.vfio_user.wire import Command
from hugepfn.host.vfio_user import VfioUserClient

from .helpers import QEMU_CAPS, attach_after_hangup, still_answers

REGS_SIZE, MEM_SIZE = 0x10000, 64 << 20      # GpuDevice profile "tiny" (checked below)

TARGET_MESSAGES = 100_000
BATCH_MAX = 400

U32_EDGES = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 20, 24, 31, 32, 33, 64, 0xFFF, 0x1000, 0xFFFF, 0x10000,
             0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]
U64_EDGES = U32_EDGES + [REGS_SIZE - 8, REGS_SIZE, MEM_SIZE - 8, MEM_SIZE, 1 << 32, 1 << 40,
                         (1 << 63), (1 << 64) - 0x1000, (1 << 64) - 1]
EDGES = {"H": [e for e in U32_EDGES if e <= 0xFFFF], "I": U32_EDGES, "Q": U64_EDGES}
MASKS = {"H": 0xFFFF, "I": 0xFFFF_FFFF, "Q": (1 << 64) - 1}
IRQ_FLAG_COMBOS = [0x21, 0x22, 0x24, 0x09, 0x11, 0x0A, 0x12, 0x0C, 0x14, 0x29, 0x25, 0x00, 0x3F, 0x40]
SANE_COUNTS = [0, 1, 2, 4, 8, 64, 4096, 1 << 20, (1 << 20) + 1]

# Each command: its fixed fields as (struct code, sane value from one entropy byte b),
# and a trailer built from the blob.  The sane values make most messages get past
# argsz checks so the deeper checks (indexes, ranges, counts) are what is fuzzed.
LAYOUTS = {
    Command.VERSION: [("H", lambda b: 0), ("H", lambda b: b % 3)],
    Command.DMA_MAP: [("I", lambda b: 32), ("I", lambda b: b % 4), ("Q", lambda b: 0),
                      ("Q", lambda b: (b % 64) * 0x10000), ("Q", lambda b: 0x1000 * (1 + b % 32))],
    Command.DMA_UNMAP: [("I", lambda b: 24), ("I", lambda b: (0, 2)[b % 2]),
                        ("Q", lambda b: (b % 64) * 0x10000), ("Q", lambda b: 0x1000 * (1 + b % 32))],
    Command.DEVICE_GET_INFO: [("I", lambda b: 16), ("I", lambda b: 0), ("I", lambda b: 0), ("I", lambda b: 0)],
    Command.DEVICE_GET_REGION_INFO: [("I", lambda b: (32, 64, 256, 8)[b % 4]), ("I", lambda b: 0),
                                     ("I", lambda b: b % 10), ("I", lambda b: 0), ("Q", lambda b: 0),
                                     ("Q", lambda b: 0)],
    Command.DEVICE_GET_REGION_IO_FDS: [("I", lambda b: 16), ("I", lambda b: 0), ("I", lambda b: b % 10),
                                       ("I", lambda b: 0)],
    Command.DEVICE_GET_IRQ_INFO: [("I", lambda b: 16), ("I", lambda b: 0), ("I", lambda b: b % 6),
                                  ("I", lambda b: 0)],
    Command.DEVICE_SET_IRQS: [("I", lambda b: 20), ("I", lambda b: IRQ_FLAG_COMBOS[b % len(IRQ_FLAG_COMBOS)]),
                              ("I", lambda b: b % 6), ("I", lambda b: b % 5), ("I", lambda b: b % 5)],
    Command.REGION_READ: [("Q", lambda b: (b * 8) % 0x2000), ("I", lambda b: (0, 2, 7, 1, 9)[b % 5]),
                          ("I", lambda b: SANE_COUNTS[b % len(SANE_COUNTS)])],
    Command.REGION_WRITE: [("Q", lambda b: (b * 8) % 0x2000), ("I", lambda b: (0, 2, 7, 1, 9)[b % 5]),
                           ("I", lambda b: (1, 2, 4, 8, 16)[b % 5])],
    Command.DEVICE_RESET: [],
    Command.DEVICE_FEATURE: [("I", lambda b: 8), ("I", lambda b: (1 + b % 8) | (1 << (16 + b % 3)))],
}
OTHER_COMMANDS = [0, 11, 12, 14, 15, 17, 18, 19, 99, 0xFFFF]
COMMAND_TABLE = [*LAYOUTS, *LAYOUTS, *OTHER_COMMANDS]     # known commands twice as likely


def _caps_blob(blob: bytes) -> bytes:
    kind = blob[0] % 4 if blob else 0
    if kind == 0:
        return json.dumps({"capabilities": QEMU_CAPS}).encode() + b"\0"
    if kind == 1:
        return json.dumps({"capabilities": {"max_msg_fds": int.from_bytes(blob[1:5], "little") - 5,
                                            "pgsizes": blob[1:2].hex()}}).encode() + b"\0"
    if kind == 2:
        return b'{"capabilities":{}}'                      # no NUL
    return blob[1:]


def build_message(selector: int, blob: bytes) -> tuple[int, bytes, bool]:
    """A structured-but-hostile message from hypothesis' entropy (selector, blob).

    Per field, two selector bits choose: the sane value, a boundary value, or a
    random value from the blob.  A few selector bits also truncate the payload,
    replace it with raw bytes, or set NO_REPLY.
    """
    cmd = COMMAND_TABLE[selector % len(COMMAND_TABLE)]
    shape = (selector >> 6) & 7
    no_reply = (selector >> 58) & 0xF == 0
    if cmd not in LAYOUTS or shape == 0:
        return int(cmd), blob, no_reply
    entropy = blob + bytes(64)
    fmt, values = "<", []
    for i, (code, sane) in enumerate(LAYOUTS[cmd]):
        mode = (selector >> (10 + 2 * i)) & 3
        b = entropy[i]
        if mode == 1:
            value = EDGES[code][b % len(EDGES[code])]
        elif mode == 2:
            value = int.from_bytes(entropy[8 + i * 8:16 + i * 8], "little") & MASKS[code]
        else:
            value = sane(b)
        fmt += code
        values.append(value)
    fixed = struct.pack(fmt, *values)
    if cmd == Command.VERSION:
        trailer = _caps_blob(blob)
    elif cmd == Command.REGION_WRITE:
        count = min(values[2], (1 << 20) + 8) if (selector >> 40) & 3 else len(blob)
        trailer = (blob * (count // max(len(blob), 1) + 1))[:count] if (selector >> 42) & 1 else blob
    elif cmd == Command.DEVICE_SET_IRQS:
        trailer = blob[:values[4] % 9] if values[1] & wire.IRQ_SET_DATA_BOOL else b""
        if not (selector >> 44) & 3:
            trailer = blob[:8]
        if mode_is_sane(selector, 0):
            fixed = struct.pack("<I", 20 + len(trailer)) + fixed[4:]
    elif cmd == Command.DEVICE_FEATURE:
        trailer = blob[:24]
        if mode_is_sane(selector, 0):
            fixed = struct.pack("<I", 8 + len(trailer)) + fixed[4:]
    else:
        trailer = b""
    payload = fixed + trailer
    if shape == 1:
        payload = payload[:entropy[0] % max(len(payload), 1)]
    return int(cmd), payload, no_reply


def mode_is_sane(selector: int, field: int) -> bool:
    return (selector >> (10 + 2 * field)) & 3 in (0, 3)


def _split(entropy: bytes) -> tuple[int, bytes]:
    return int.from_bytes(entropy[:8], "little"), entropy[8:]


# One draw per message: 8 bytes of selector, then up to 48 bytes of field entropy.
# (Bytes rather than a 64-bit integer: hypothesis biases integers to small values,
# which would leave the high selector bits almost always zero.)
hostile_messages = st.lists(st.binary(min_size=8, max_size=56).map(_split),
                            min_size=BATCH_MAX // 2, max_size=BATCH_MAX)


class Exchange:
    """Pipelines a batch over a non-blocking socket and collects the reply headers."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        sock.setblocking(False)

    def run(self, data: bytes, expected: int, timeout: float = 30.0) -> tuple[list[tuple], bool]:
        """Send ``data``; read until ``expected`` replies.  Returns (headers, closed)."""
        out = memoryview(data)
        buf = bytearray()
        headers: list[tuple] = []
        self.sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while len(headers) < expected:
                events = self.sel.select(timeout)
                if not events:
                    raise TimeoutError(f"server answered {len(headers)} of {expected} messages")
                for _, mask in events:
                    if mask & selectors.EVENT_WRITE and out:
                        try:
                            out = out[self.sock.send(out):]
                        except BrokenPipeError:
                            return headers, True
                        if not out:
                            self.sel.modify(self.sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = self.sock.recv(1 << 20)
                        except ConnectionResetError:
                            return headers, True
                        if not chunk:
                            return headers, True
                        buf += chunk
                        while len(buf) >= 16:
                            head = wire.HEADER.unpack_from(buf)
                            if len(buf) < head[2]:
                                break
                            headers.append(head + (bytes(buf[16:head[2]]),))
                            del buf[:head[2]]
            return headers, False
        finally:
            self.sel.unregister(self.sock)


def _negotiated(socket_path) -> VfioUserClient:
    client = VfioUserClient.connect(socket_path)
    client.negotiate(QEMU_CAPS)
    return client


@pytest.fixture
def server_process(backend, socket_path, tmp_path):
    """`hugepfn serve --profile tiny` in its own process: the server and this test
    (hypothesis + the client) then run in parallel, and a crash is a dead process."""
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "hugepfn.cli.main", "serve", "--profile", "tiny",
                                 "--socket", str(socket_path), "--backend", backend],
                                stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield proc
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    text = log.read_text()
    assert alive, f"server process died: {text[-2000:]}"
    assert proc.returncode == 0 and "Traceback" not in text, text[-2000:]


def test_fuzz_100k_messages_then_the_server_still_answers(server_process, socket_path, facts, backend):
    assert (facts.regs_size, facts.mem_size) == (REGS_SIZE, MEM_SIZE)
    python = backend == "python"
    state = {"client": _negotiated(socket_path), "sent": 0, "errors": 0, "ok": 0, "disconnects": 0}

    @settings(max_examples=50, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(hostile_messages)
    def batch(entropy):
        client = state["client"]
        chunks, expected = [], []
        messages = [build_message(selector, blob) for selector, blob in entropy]
        for n, (cmd, payload, no_reply) in enumerate(messages):
            no_reply = no_reply and python     # libvfio-user does not honour NO_REPLY
            msg_id = (state["sent"] + n) & 0xFFFF
            chunks.append(wire.message(msg_id, cmd, payload, wire.FLAG_NO_REPLY if no_reply else 0))
            if not no_reply:
                expected.append((msg_id, cmd))
        headers, closed = Exchange(client.sock).run(b"".join(chunks), len(expected))
        state["sent"] += len(messages)
        for (msg_id, cmd), got in zip(expected, headers):
            got_id, got_cmd, size, flags, error_no, payload = got
            assert (got_id, got_cmd) == (msg_id, cmd)
            assert flags in (wire.MSG_TYPE_REPLY, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR)
            if flags & wire.FLAG_ERROR:
                assert error_no > 0
                if python:
                    assert size == 16 and payload == b""
                state["errors"] += 1
            else:
                state["ok"] += 1
        if closed:
            # Only libvfio-user may hang up on a framed message; the python engine
            # answers every framed message.
            assert not python, "python engine dropped a well-framed connection"
            state["disconnects"] += 1
            client.close()
            state["client"] = attach_after_hangup(socket_path, backend)
        else:
            assert len(headers) == len(expected)

    rounds = 0
    while state["sent"] < TARGET_MESSAGES and rounds < 20:
        batch()
        rounds += 1
    assert state["sent"] >= TARGET_MESSAGES
    assert state["ok"] > 1000 and state["errors"] > 1000      # both paths were exercised

    client = state["client"]
    client.sock.setblocking(True)
    still_answers(client)
    client.region_write(facts.regs, facts.scratch, b"after fuzz..")
    assert client.region_read(facts.regs, facts.scratch, 12) == b"after fuzz.."
    client.close()
    with attach_after_hangup(socket_path, backend) as fresh:
        assert fresh.regions[facts.mem].fd is not None and fresh.regions[facts.mem].size == MEM_SIZE
        assert fresh.config_read(0, 4) == facts.ids
    print(f"fuzz[{backend}]: {state['sent']} messages, {state['ok']} ok, {state['errors']} errors, "
          f"{state['disconnects']} disconnects")


@pytest.mark.parametrize("seed_case", ["raw"])
def test_fuzz_raw_bytes_after_version(server, socket_path, backend, seed_case):
    outcomes = {"replied": 0, "closed": 0}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(min_size=1, max_size=512))
    def raw_bytes(blob):
        client = attach_after_hangup(socket_path, backend)
        sock = client.sock
        sock.sendall(blob)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        got = b""
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        outcomes["replied" if got else "closed"] += 1
        client.close()

    raw_bytes()
    with attach_after_hangup(socket_path, backend) as c:
        still_answers(c)
    assert sum(outcomes.values()) >= 100
