"""Served devices in scenario files: the `serve` table, the `inject` step, clean-up, errors."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from hugepfn.host.scenario import ScenarioError, ScenarioRun, parse_scenario
from hugepfn.host.scenario.served import served_devices

REPO = Path(__file__).resolve().parents[2]

BASE = """
kernel = "7.0"
[sysctl]
"vm.memory_failure_early_kill" = 1
[[device]]
name = "gpu"
serve = { profile = "tiny" }
[[device]]
name = "plain"
bars = [ { index = 0, phys = 0x3800000000, size = "1G" } ]
[[process]]
comm = "qemu"
pid = 4242
"""


def scenario(extra: str = "", base: str = BASE):
    return parse_scenario(tomllib.loads(base + extra))


def test_inject_step_runs_the_whole_path_and_cleans_up():
    run = ScenarioRun(scenario("""
[[step]]
do = "mmap"
pid = 4242
device = "gpu"
region = 2
length = "2M"
addr = 0x7f0000000000
[[step]]
do = "register"
device = "gpu"
region = 2
[[step]]
do = "inject"
device = "gpu"
bar = 2
offset = 0x1234
granularity = "4K"
"""))
    served = served_devices(run.machine)["gpu"]
    directory = served.directory
    assert directory.is_dir()
    trace = run.run().to_json()
    step = trace["steps"][2]
    assert step["ret"] == 0
    assert step["injected"] == {"bar": 2, "offset": "0x1000", "length": "0x1000", "dpa": "0x1000", "sequence": 1}
    assert step["signals"] == [{"tid": 4242, "signo": "SIGBUS", "code": "BUS_MCEERR_AO", "addr": "0x7f0000001000",
                                "addr_lsb": 12, "delivered": True}]
    [ghes] = step["ghes"]
    assert (ghes["pfn"], ghes["phys"], ghes["current"], ghes["ret"], ghes["result"]) == \
        ("0x100001", "0x100001000", "kworker", 0, "Recovered")
    assert ghes["event"] == {"pfn": "0x100001", "device": "0000:01:00.0", "bar": 2, "bar_offset": "0x1000",
                             "granularity": "0x1000", "policy": "upstream", "action": "signalled",
                             "result": "Recovered", "signals_sent": 1,
                             "signals": [{"tid": 4242, "code": 5, "addr": "0x7f0000001000", "lsb": 12}],
                             "consumption_count": 0, "profile": "7.0"}
    assert trace["served"] == {"gpu": {"profile": "tiny", "backend": "python", "bars": [
        {"index": 0, "address": "0xc0000000", "size": "0x10000"},
        {"index": 2, "address": "0x100000000", "size": "0x4000000"},
        {"index": 4, "address": "0xc0010000", "size": "0x4000"}]}}
    assert served.closed and not directory.exists()


def test_a_refused_injection_is_a_failed_step_not_a_crash():
    trace = ScenarioRun(scenario("""
[[step]]
do = "inject"
device = "gpu"
bar = 0
offset = 0
""")).run().to_json()
    assert (trace["steps"][0]["ret"], trace["steps"][0]["error"]) == ("-EINVAL", "BAR 0 is not a memory BAR "
                                                                                 "(memory BARs: 2)")


def test_inject_on_a_device_that_is_not_served():
    run = ScenarioRun(scenario("""
[[step]]
do = "inject"
device = "plain"
bar = 0
offset = 0
"""))
    with pytest.raises(ScenarioError, match=r"^step 1 \(inject\): device: 'plain' is not a served device"):
        run.run()


@pytest.mark.parametrize("device,message", [
    ('serve = "tiny"', "device[0]: serve: expected a table such as"),
    ('serve = { profile = "tiny", color = "red" }', "device gpu: serve: unknown field 'color'"),
    ('serve = { backend = "fpga" }', "device gpu: serve: backend: must be one of python, libvfio-user, auto"),
    ('serve = { ghes = "later" }', "device gpu: serve: ghes: must be one of async, sync"),
    ('serve = { profile = "no-such-profile" }', "device gpu: serve: "),
    ('serve = {}\nbars = [ { index = 0, phys = 0x3800000000, size = "1G" } ]',
     "device gpu: serve: a served device gets its BARs from firmware placement; drop `bars`"),
])
def test_bad_serve_tables_are_one_line_errors(device, message):
    base = f'[[device]]\nname = "gpu"\n{device}\n'
    with pytest.raises(ScenarioError) as exc:
        ScenarioRun(parse_scenario(tomllib.loads(base)))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_inject_fields_are_validated():
    with pytest.raises(ScenarioError, match=r"^step 1 \(inject\): error_type: must be one of unknown, single-ecc"):
        scenario('[[step]]\ndo = "inject"\ndevice = "gpu"\nbar = 2\noffset = 0\nerror_type = "gremlins"\n')
    with pytest.raises(ScenarioError, match=r"^step 1 \(inject\): current: no thread with tid 99"):
        scenario('[[step]]\ndo = "inject"\ndevice = "gpu"\nbar = 2\noffset = 0\ncurrent = 99\n')


def test_demo_golden_trace_is_the_whole_path():
    """The demo's trace holds each link of the path (its golden file is checked in tests/host)."""
    trace = json.loads((REPO / "fixtures" / "traces" / "demo.json").read_text())
    by_note = {s.get("note", "")[:20]: s for s in trace["steps"]}
    injects = [s for s in trace["steps"] if s["do"] == "inject"]
    assert [s["ghes"][0]["result"] for s in injects] == ["Recovered", "Recovered"]
    assert [s["signals"][0]["code"] for s in injects] == ["BUS_MCEERR_AO", "BUS_MCEERR_AO"]
    consume = by_note["qemu's main thread l"]
    assert consume["consumed_poison"] is True and consume["signals"][0]["code"] == "BUS_MCEERR_AR"
    assert trace["served"]["gpu"]["bars"][1] == {"index": 2, "address": "0x200000000", "size": "0x200000000"}


@pytest.mark.parametrize("backend", ["python", "libvfio-user"])
def test_the_demo_does_the_same_on_every_backend(backend):
    from hugepfn.device.vfio_user.backends import available_backends

    choice = available_backends()[backend]
    if not choice.available:
        pytest.skip(f"{backend}: {choice.reason}")
    text = (REPO / "fixtures" / "scenarios" / "demo.toml").read_text()
    assert 'backend = "python"' in text
    trace = ScenarioRun(parse_scenario(tomllib.loads(text.replace('backend = "python"', f'backend = "{backend}"'))))
    got = trace.run().to_json()
    golden = json.loads((REPO / "fixtures" / "traces" / "demo.json").read_text())
    assert got["steps"] == golden["steps"] and got["summary"] == golden["summary"]
    assert got["served"]["gpu"]["backend"] == backend


def test_status_sees_a_client_of_the_libvfio_user_backend(tmp_path):
    from hugepfn.device.control import ControlClient, ControlServer, control_path
    from hugepfn.device.gpu import GpuDevice
    from hugepfn.device.vfio_user.backends import select_backend
    from hugepfn.host.vfio_user.client import VfioUserClient

    try:
        choice, _ = select_backend("libvfio-user")
    except ValueError as exc:
        pytest.skip(str(exc))
    sock = tmp_path / "gpu.sock"
    with GpuDevice.from_profile("tiny") as device:
        server = choice.Server(device, sock)
        server.start()
        try:
            with ControlServer(device, control_path(sock), server=server):
                with ControlClient(control_path(sock)) as c:
                    assert (c.status()["backend"], c.status()["attached"]) == ("libvfio-user", False)
                    with VfioUserClient.attach(sock):
                        assert c.status()["attached"] is True
        finally:
            server.close()


def test_events_of_a_served_scenario_reach_a_unix_listener(tmp_path, monkeypatch):
    from hugepfn.host.events import subscriber

    monkeypatch.setenv("HUGEPFN_EVENTS_DIR", str(tmp_path / "events"))
    text = BASE.replace('serve = { profile = "tiny" }', 'serve = { profile = "tiny", events = "unix" }')
    with subscriber("unix") as sub:
        trace = ScenarioRun(parse_scenario(tomllib.loads(text + """
[[step]]
do = "inject"
device = "gpu"
bar = 2
offset = 0x5000
granularity = "8K"
"""))).run().to_json()
        event = sub.receive(2.0)
    assert event is not None and event.seq is not None and event.timestamp_ns is not None
    assert (event.pfn, event.bar, event.bar_offset, event.granularity, event.action, event.result,
            event.signals_sent) == (0x100004, 2, 0x4000, 0x2000, "ignored", "Ignored", 0)
    assert trace["steps"][0]["ghes"][0]["event"]["result"] == "Ignored"
    assert sub.receive(0.05) is None
