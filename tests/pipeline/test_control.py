"""The control channel of a served device: JSON lines on SOCKET.ctl, exact replies, hostile input."""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time

import pytest

from hugepfn.abi.cper import CPER_MEM_ERR_PARITY
from hugepfn.device.control import (MAX_LINE, ControlClient, ControlError, ControlServer, control_path,
                                    describe_injection)


def test_control_path_is_the_vfio_user_socket_plus_ctl():
    assert control_path("/run/user/1000/gpu0.sock") == "/run/user/1000/gpu0.sock.ctl"


def test_socket_is_mode_0600(serve):
    served = serve()
    assert stat.S_IMODE(os.stat(control_path(served.socket_path)).st_mode) == 0o600


def test_inject_by_bar_offset_reports_the_record(serve):
    served = serve()
    with served.control() as c:
        first = c.inject(bar=2, offset="0x123456", granularity="4K")
        second = c.inject(bar=2, offset=0x2040, granularity=64, error_type="parity")
    assert first == {"ok": True, "op": "inject", "bar": 2, "offset": 0x123000, "length": 0x1000,
                     "dpa": 0x123000, "granularity": 0x1000, "error_type": "multi-ecc", "sequence": 1}
    assert second == {"ok": True, "op": "inject", "bar": 2, "offset": 0x2040, "length": 64, "dpa": 0x2040,
                      "granularity": 64, "error_type": "parity", "sequence": 2}
    records = served.device.queued_errors()
    assert [(r.sequence, r.bar, r.bar_offset, r.length, r.physical_addr, r.granularity, r.error_type)
            for r in records] == [(1, 2, 0x123000, 0x1000, 0x123000, 0x1000, 3),
                                  (2, 2, 0x2040, 64, 0x2040, 64, CPER_MEM_ERR_PARITY)]
    assert served.device.poison.is_poisoned(2, 0x123000, 0x1000)
    assert describe_injection(first) == ("poisoned BAR2 offset 0x123000 length 4KiB (dpa 0x123000, "
                                         "granularity 4KiB, multi-ecc), error record #1")


def test_inject_by_dpa_on_a_profile_with_a_dpa_base(serve):
    served = serve("nvgrace")
    base = served.device.profile.bar(2).dpa_base
    with served.control() as c:
        reply = c.inject(dpa=base + 0x10_0000_0123, granularity="2M")
    assert (reply["bar"], reply["offset"], reply["length"], reply["dpa"]) == (2, 0x10_0000_0000, 2 << 20,
                                                                          base + 0x10_0000_0000)


def test_status_says_what_the_device_holds(serve):
    served = serve()
    with served.control() as c:
        c.inject(bar=2, offset=0x10000, granularity="8K")
        status = c.status()
    assert status == {
        "ok": True, "op": "status", "profile": "tiny", "backend": "python", "attached": False, "clients_served": 0,
        "bars": [{"index": 0, "kind": "registers", "size": 0x10000, "access": "trapped"},
                 {"index": 2, "kind": "memory", "size": 64 << 20, "access": "fd", "memory_size": 64 << 20,
                  "dpa_base": 0},
                 {"index": 4, "kind": "msix", "size": 0x4000, "access": "trapped"}],
        "poisoned": [{"bar": 2, "offset": 0x10000, "length": 0x2000, "dpa": 0x10000}], "poisoned_pages": 2,
        "error_queue": {"count": 1, "capacity": 16, "lost": 0, "head": 0, "sequence": 1},
        "vfio_user": {"clients_refused": 0, "dma_windows": [], "irq_eventfds": []}}


def test_status_sees_an_attached_client(serve):
    from hugepfn.host.vfio_user.client import VfioUserClient

    served = serve()
    with VfioUserClient.attach(served.socket_path) as client:
        client.wire_eventfds(3, 1)                      # the vfio ERR index, as GhesErrorSource does
        with served.control() as c:
            status = c.status()
    assert (status["attached"], status["clients_served"], status["vfio_user"]["irq_eventfds"]) == (True, 1, [[3, 0]])


def test_repair_clears_whole_cachelines(serve):
    served = serve()
    with served.control() as c:
        c.inject(bar=2, offset=0x3000, granularity="4K")
        assert c.repair(bar=2, offset=0x3010, length=0x30)["cleared"] == 64
        assert c.status()["poisoned"] == [{"bar": 2, "offset": 0x3040, "length": 0xFC0, "dpa": 0x3040}]


HOSTILE = [
    (b"nonsense", "not JSON"),
    (b"[1, 2]", "a request is a JSON object"),
    (b'"inject"', "a request is a JSON object"),
    (b'{"bar": 2}', "op: expected inject, repair, status or config, got None"),
    (b'{"op": "format-disk"}', "op: expected inject, repair, status or config"),
    (b'{"op": ["inject"]}', "op: expected inject, repair, status or config"),
    (b'{"op": "inject"}', "inject needs either bar= and offset=, or dpa="),
    (b'{"op": "inject", "bar": 2}', "inject needs either bar= and offset=, or dpa="),
    (b'{"op": "inject", "bar": 2, "offset": 0, "dpa": 0}', "inject needs either bar= and offset=, or dpa="),
    (b'{"op": "inject", "bar": true, "offset": 0}', "bar: expected a BAR index, got True"),
    (b'{"op": "inject", "bar": "2", "offset": 0}', "bar: expected a BAR index, got '2'"),
    (b'{"op": "inject", "bar": 0, "offset": 0}', "BAR 0 is not a memory BAR (memory BARs: 2)"),
    (b'{"op": "inject", "bar": 2, "offset": -1}', "offset: must not be negative, got -1"),
    (b'{"op": "inject", "bar": 2, "offset": 18446744073709551616}', "offset: must be below 0x10000000000000000, got 18446744073709551616"),
    (b'{"op": "inject", "bar": 2, "offset": "lots"}', "offset: expected a size such as 4K, 0x1000, 8GiB or 1_000, got 'lots'"),
    (b'{"op": "inject", "bar": 2, "offset": 1.5}', "offset: expected a size such as 4K, 0x1000, 8GiB or 1_000, got 1.5"),
    (b'{"op": "inject", "bar": 2, "offset": "0x4000000"}', "offset 0x4000000 is outside BAR 2's 0x4000000 bytes"),
    (b'{"op": "inject", "bar": 2, "offset": 0, "granularity": 3}', "granularity 0x3 must be a power of two"),
    (b'{"op": "inject", "bar": 2, "offset": 0, "granularity": "2G"}', "granularity 0x80000000 must be a power of two"),
    (b'{"op": "inject", "bar": 2, "offset": 0, "error_type": "gremlins"}', "error_type: expected 0..255 or one of"),
    (b'{"op": "inject", "bar": 2, "offset": 0, "error_type": 256}', "error_type: expected 0..255"),
    (b'{"op": "inject", "bar": 2, "offset": 0, "extra": 1}', "unknown field(s) extra"),
    (b'{"op": "inject", "dpa": 1099511627776}', "device physical address 0x10000000000 is not in any memory BAR"),
    (b'{"op": "repair", "bar": 2}', "offset: missing"),
    (b'{"op": "repair", "bar": 2, "offset": 0, "length": 0}', "length: must be positive"),
    (b'{"op": "status", "verbose": true}', "unknown field(s) verbose (expected none)"),
    (b"[" * 100000, "request longer than"),
    (b'{"op": "inject", "bar": 2, "offset": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not JSON: maximum recursion depth"),
    (b"\xff\xfe\x00garbage", "not JSON"),
]


@pytest.fixture(scope="module")
def one_server(tmp_path_factory):
    """One device + control server for the parametrized hostile lines (none may change it)."""
    from hugepfn.device.gpu import GpuDevice

    device = GpuDevice.from_profile("tiny")
    server = ControlServer(device, tmp_path_factory.mktemp("ctl") / "gpu.sock.ctl")
    yield server
    server.close()
    device.close()


@pytest.mark.parametrize("line,error", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_request_gets_a_one_line_error_and_changes_nothing(one_server, line, error):
    server = one_server
    served = server
    reply = server.handle_line(line)
    assert reply["ok"] is False and error in reply["error"] and "\n" not in reply["error"]
    assert len(served.device.poison) == 0 and served.device.queued_errors() == []


def test_errors_over_the_socket_keep_the_connection_usable(serve):
    served = serve()
    with served.control() as c:
        for line, error in HOSTILE:
            if len(line) > MAX_LINE:
                continue
            c.sock.sendall(line.replace(b"\n", b" ") + b"\n")
            reply = json.loads(c._file.readline())
            assert reply["ok"] is False and error in reply["error"]
        assert c.status()["poisoned"] == []
    assert served.control_server.errors == len([1 for line, _ in HOSTILE if len(line) <= MAX_LINE])


def test_an_over_long_line_is_refused_and_the_connection_closed(serve):
    served = serve()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(control_path(served.socket_path))
        s.sendall(b"x" * (MAX_LINE + 10))
        reply = s.makefile("rb").readline()
        assert json.loads(reply) == {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
        assert s.recv(10) == b""
    with served.control() as c:                       # the server is still there
        assert c.status()["ok"] is True


def test_client_raises_the_servers_error(serve):
    served = serve()
    with served.control() as c, pytest.raises(ControlError, match=r"^BAR 4 is not a memory BAR"):
        c.inject(bar=4, offset=0)


def test_client_without_server_says_so(tmp_path):
    with pytest.raises(OSError, match="is `hugepfn serve` running"):
        ControlClient(tmp_path / "none.sock.ctl")


def test_a_live_control_socket_is_not_stolen_but_a_stale_one_is_replaced(serve, tmp_path):
    served = serve()
    with pytest.raises(OSError) as exc:
        ControlServer(served.device, control_path(served.socket_path))
    assert exc.value.errno == errno.EADDRINUSE
    stale = tmp_path / "stale.sock.ctl"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()
    with ControlServer(served.device, stale) as again, ControlClient(stale) as c:
        assert c.status()["profile"] == "tiny" and again.requests == 1


def test_fuzzed_requests_always_get_a_reply(one_server):
    """Structured-but-hostile requests: every one gets {"ok": ...}; the device only changes
    through a well-formed inject or repair."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=True), st.text(max_size=12),
                        st.sampled_from(["0x1000", "4K", "2MiB", "1G", "-1", "0x", "multi-ecc", "parity"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
    keys = st.sampled_from(["op", "bar", "offset", "dpa", "granularity", "error_type", "length", "x"])
    requests = st.dictionaries(keys, values, max_size=6).map(
        lambda d: d if "op" not in d or not isinstance(d["op"], bool) else {**d, "op": "inject"})
    ops = st.sampled_from(["inject", "repair", "status", "nope"])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(op=ops, request=requests)
    def check(op, request):
        request = {"op": op, **{k: v for k, v in request.items() if k != "op"}}
        reply = one_server.handle_line(json.dumps(request))
        assert set(reply) >= {"ok"} and (reply["ok"] is True or "\n" not in reply["error"])
        assert not reply.get("error", "").startswith("internal error")

    check()
    one_server.device.poison.clear()
    one_server.device.registers.queue.records.clear()


def test_a_socket_path_longer_than_sun_path_works(tmp_path):
    from hugepfn.device.gpu import GpuDevice

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = control_path(deep / "gpu.sock")
    assert len(path) > 108
    with GpuDevice.from_profile("tiny") as device, ControlServer(device, path), ControlClient(path) as c:
        assert c.inject(bar=2, offset=0)["sequence"] == 1


def _switches(tid: int) -> int:
    """Times the thread went off the CPU (it slept, or was preempted) since it started."""
    with open(f"/proc/self/task/{tid}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)


def test_an_idle_control_server_sleeps_until_a_client_or_close(tmp_path):
    from hugepfn.device.gpu import GpuDevice

    path = control_path(tmp_path / "gpu.sock")
    with GpuDevice.from_profile("tiny") as device:
        server = ControlServer(device, path).start()
        thread = server._thread
        with ControlClient(path) as c:                  # it serves, then goes back to sleep
            assert c.status()["ok"] is True
        assert server.requests == 1
        time.sleep(0.1)
        before = _switches(thread.native_id)
        time.sleep(0.5)
        assert _switches(thread.native_id) == before, "the control thread woke with nothing to do"
        with ControlClient(path) as c:
            assert c.inject(bar=2, offset=0)["sequence"] == 1
        start = time.monotonic()
        server.close()
        assert not thread.is_alive() and time.monotonic() - start < 1.0
        server.close()                                  # a second close does nothing
