"""`hugepfn monitor` as a subprocess: exact lines out, one-line notices and errors."""
from __future__ import annotations

import re
import signal
import sys

from hugepfn.host import events
from hugepfn.host.events import DEFAULT_GROUP

from .conftest import make_event, needs_root, python, spawn
from .test_unix_fallback import _drop_net_admin

MONITOR = [sys.executable, "-m", "hugepfn.cli.main", "monitor"]


def _publish_in(netns: str, lines: list[str]) -> list[str]:
    """Run a publisher child inside `netns`, feed it lines, return what it echoed."""
    publisher = spawn(python("publish_events.py", "netlink"), netns=netns)
    try:
        out, err = publisher.communicate("\n".join(lines) + "\n", timeout=15)
    finally:
        publisher.kill()
        publisher.wait()
    assert publisher.returncode == 0, err
    return out.splitlines()[1:]  # after "ready"


def _wait_listening(monitor) -> str:
    line = monitor.stderr.readline().rstrip("\n")
    assert line.startswith("hugepfn monitor: "), (line, monitor.stderr.read())
    return line


@needs_root
def test_monitor_json_count_2_prints_exact_lines(private_netns):
    sent = [make_event(1), make_event(2)]
    monitor = spawn([*MONITOR, "--json", "--count", "2", "--transport", "netlink", "--timeout", "15"],
                    netns=private_netns)
    try:
        assert _wait_listening(monitor) == f"hugepfn monitor: listening on NETLINK_USERSOCK group {DEFAULT_GROUP}"
        echoed = _publish_in(private_netns, [e.to_json() for e in sent])
        out, err = monitor.communicate(timeout=15)
    finally:
        monitor.kill()
        monitor.wait()
    published = [events.MemoryFailureEvent.from_json(line) for line in echoed]
    assert published == sent                         # the events themselves, as sent
    [pid] = {e.publisher_pid for e in published}     # stamped with the publisher's pid ...
    assert pid > 0
    assert monitor.returncode == 0, err
    assert out == "".join(line + "\n" for line in echoed)   # ... which the monitor prints
    assert err == ""


@needs_root
def test_monitor_reports_a_malformed_message_in_one_line_and_goes_on(private_netns):
    garbage = bytes(20)  # a netlink header of type 0: not ours
    monitor = spawn([*MONITOR, "--count", "1", "--timeout", "15"], netns=private_netns)
    try:
        assert _wait_listening(monitor) == f"hugepfn monitor: listening on NETLINK_USERSOCK group {DEFAULT_GROUP}"
        echoed = _publish_in(private_netns, ["raw:" + garbage.hex(), "raw:ff", make_event(3).to_json()])
        out, err = monitor.communicate(timeout=15)
    finally:
        monitor.kill()
        monitor.wait()
    assert monitor.returncode == 0, err
    published = events.MemoryFailureEvent.from_json(echoed[-1])
    assert published == make_event(3) and published.publisher_pid > 0
    assert out == published.summary() + "\n"
    assert f" pid {published.publisher_pid} 0000:41:00.0 " in out
    where = f"NETLINK_USERSOCK group {DEFAULT_GROUP}"
    assert err.splitlines() == [
        f"hugepfn monitor: skipped malformed message on {where}: not a hugepfn event (nlmsg_type 0x0) (20 bytes)",
        f"hugepfn monitor: skipped malformed message on {where}: "
        "too short for a netlink header and hpfn_mf header (1 bytes)",
    ]


@needs_root
def test_monitor_without_cap_net_admin_says_why_and_uses_the_fallback(events_dir):
    monitor = spawn([*MONITOR, "--json", "--count", "1", "--timeout", "15"], events_dir=events_dir,
                    preexec_fn=_drop_net_admin)
    try:
        line = _wait_listening(monitor)
        assert re.fullmatch(
            rf"hugepfn monitor: netlink not permitted \(EPERM: joining NETLINK_USERSOCK group {DEFAULT_GROUP} "
            rf"needs CAP_NET_ADMIN\); falling back to unix socket {re.escape(str(events_dir))}/"
            rf"{monitor.pid}-[0-9a-f]{{8}}\.sock", line), line
        with events.publisher("unix", events_dir=events_dir) as pub:
            stamped = pub.publish(make_event(4, seq=None, timestamp_ns=None))
        out, err = monitor.communicate(timeout=15)
    finally:
        monitor.kill()
        monitor.wait()
    assert (monitor.returncode, out, err) == (0, stamped.to_json() + "\n", "")


def test_monitor_count_not_reached_before_timeout_exits_1(events_dir):
    monitor = spawn([*MONITOR, "--transport", "unix", "--count", "2", "--timeout", "0.3"], events_dir=events_dir)
    out, err = monitor.communicate(timeout=15)
    assert monitor.returncode == 1
    assert out == ""
    assert err.splitlines()[1:] == ["hugepfn monitor: timed out after 0.3 s with 0 of 2 events"]


def test_ctrl_c_exits_cleanly_and_removes_the_socket(events_dir):
    monitor = spawn([*MONITOR, "--transport", "unix"], events_dir=events_dir)
    try:
        line = _wait_listening(monitor)
        assert line.startswith(f"hugepfn monitor: listening on unix socket {events_dir}/")
        assert len(list(events_dir.iterdir())) == 1
        monitor.send_signal(signal.SIGINT)
        out, err = monitor.communicate(timeout=15)
    finally:
        monitor.kill()
        monitor.wait()
    assert monitor.returncode == 130
    assert (out, err) == ("", "hugepfn: interrupted\n")
    assert list(events_dir.iterdir()) == []


def test_help_and_bad_arguments():
    helped = spawn([*MONITOR, "--help"])
    out, err = helped.communicate(timeout=15)
    assert helped.returncode == 0
    assert out.startswith("usage: hugepfn monitor [-h] [--json] [--transport {auto,netlink,unix}]")
    assert f"NETLINK_USERSOCK multicast group {DEFAULT_GROUP}" in out
    bad = spawn([*MONITOR, "--transport", "carrier-pigeon"])
    out, err = bad.communicate(timeout=15)
    assert bad.returncode == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("hugepfn monitor: error: argument --transport: invalid choice: "
                                    "'carrier-pigeon' (choose from 'auto', 'netlink', 'unix')")
    group = spawn([*MONITOR, "--group", "33"])
    out, err = group.communicate(timeout=15)
    assert (group.returncode, err) == (
        2, "hugepfn monitor: error: netlink group must be 1..32 (NETLINK_USERSOCK has 32 groups), got 33\n")


@needs_root
def test_monitor_forced_onto_netlink_without_permission_is_a_one_line_error():
    monitor = spawn([*MONITOR, "--transport", "netlink"], preexec_fn=_drop_net_admin)
    out, err = monitor.communicate(timeout=15)
    assert (monitor.returncode, out) == (1, "")
    assert err == (f"hugepfn monitor: error: netlink not permitted (EPERM: joining NETLINK_USERSOCK group "
                   f"{DEFAULT_GROUP} needs CAP_NET_ADMIN)\n")


def test_monitor_timeout_alone_is_a_duration_not_a_failure(events_dir):
    monitor = spawn([*MONITOR, "--transport", "unix", "--timeout", "0.2"], events_dir=events_dir)
    out, err = monitor.communicate(timeout=15)
    assert (monitor.returncode, out) == (0, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"hugepfn monitor: listening on unix socket {events_dir}/")


def test_building_the_cli_does_not_import_pyroute2():
    code = ("import sys, hugepfn.cli.main as m; m.build_parser(); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'pyroute2'))")
    probe = spawn([sys.executable, "-c", code])
    out, err = probe.communicate(timeout=15)
    assert (probe.returncode, out, err) == (0, "[]\n", "")
