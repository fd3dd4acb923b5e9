"""The unix-socket fallback: same bytes as netlink, fan-out, stale sockets, safety."""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import stat

import pytest

from hugepfn.host import events
from hugepfn.host.events import DEFAULT_GROUP, UnsafeEventsDir, encode
from hugepfn.host.events.netlink import NETLINK_ADD_MEMBERSHIP, NETLINK_USERSOCK, SOL_NETLINK

from .conftest import make_event, needs_root, python, spawn


def test_unix_listener_gets_exact_events_in_order(events_dir):
    sent = [make_event(n) for n in range(4)]
    with events.subscriber("unix", events_dir=events_dir) as sub, \
         events.publisher("unix", events_dir=events_dir) as pub:
        assert stat.S_IMODE(os.stat(events_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sub.path).st_mode) == 0o600
        assert [pub.publish(e) for e in sent] == sent
        assert [sub.receive(5) for _ in sent] == sent
        assert sub.receive(0.05) is None
    assert list(events_dir.iterdir()) == []  # the listener removed its socket


@needs_root
def test_fallback_carries_the_identical_datagram(private_netns, events_dir):
    """auto publishes once; the netlink group and the unix listener get the same bytes."""
    from pyroute2.netlink.nlsocket import NetlinkSocket

    nl = NetlinkSocket(family=NETLINK_USERSOCK, netns=private_netns)
    nl.bind()
    raw_nl = socket.socket(fileno=os.dup(nl.fileno()))
    raw_nl.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, DEFAULT_GROUP)
    raw_nl.settimeout(5)
    os.mkdir(events_dir, 0o700)
    raw_unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    raw_unix.bind(str(events_dir / "raw.sock"))
    raw_unix.settimeout(5)
    try:
        with events.publisher("auto", netns=private_netns, events_dir=events_dir) as pub:
            assert pub.transport == "netlink+unix"
            stamped = pub.publish(make_event(1, seq=None, timestamp_ns=None))
        over_netlink = raw_nl.recv(65536)
        over_unix = raw_unix.recv(65536)
    finally:
        raw_nl.close()
        raw_unix.close()
        nl.close()
    assert over_netlink == over_unix == encode(stamped, port_id=os.getpid())
    assert events.decode(over_unix) == stamped


def _drop_net_admin():
    """preexec: leave CAP_NET_ADMIN out of the bounding set, so even root cannot join a group."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 12, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_ADMIN
        raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


@needs_root
def test_listener_without_cap_net_admin_falls_back_and_still_hears_auto_publishers(events_dir):
    listener = spawn(python("listen_events.py", "auto", "2", "15"), events_dir=events_dir,
                     preexec_fn=_drop_net_admin)
    try:
        ready = listener.stdout.readline().strip()
        assert ready.startswith(f"ready unix socket {events_dir}/"), (ready, listener.stderr.read())
        with events.publisher("unix", events_dir=events_dir) as pub:
            sent = [pub.publish(make_event(n)) for n in (1, 2)]
        out, err = listener.communicate(timeout=15)
    finally:
        listener.kill()
        listener.wait()
    assert out.splitlines() == [e.to_json() for e in sent]
    assert listener.returncode == 0 and err == ""


def test_each_unix_listener_gets_each_event(events_dir):
    with events.subscriber("unix", events_dir=events_dir) as a, \
         events.subscriber("unix", events_dir=events_dir) as b, \
         events.publisher("unix", events_dir=events_dir) as pub:
        pub.publish(make_event(1))
        assert a.receive(5) == make_event(1)
        assert b.receive(5) == make_event(1)
        assert pub.senders[0].delivered == 2


def test_a_dead_listener_socket_is_removed(events_dir):
    os.mkdir(events_dir, 0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(events_dir / "12345-deadbeef.sock"))
    dead.close()  # killed listeners leave their socket file behind
    with events.subscriber("unix", events_dir=events_dir) as live, \
         events.publisher("unix", events_dir=events_dir) as pub:
        pub.publish(make_event(1))
        assert live.receive(5) == make_event(1)
        assert [p.name for p in events_dir.iterdir()] == [live.path.name]


def test_a_full_listener_loses_events_but_never_blocks_the_publisher(events_dir):
    total = 3000
    with events.subscriber("unix", events_dir=events_dir) as slow, \
         events.publisher("unix", events_dir=events_dir) as pub:
        for n in range(total):
            pub.publish(make_event(1, seq=n))
        sender = pub.senders[0]
        assert sender.dropped > 0
        assert sender.delivered + sender.dropped == total
        got = []
        while (event := slow.receive(0.05)) is not None:
            got.append(event.seq)
    assert got == list(range(sender.delivered))  # the first ones, in order, then nothing


def test_malformed_datagrams_are_reported_once_and_skipped(events_dir):
    notices = []
    with events.subscriber("unix", events_dir=events_dir, on_notice=notices.append) as sub, \
         events.publisher("unix", events_dir=events_dir) as pub:
        pub.senders[0].send(b"garbage")
        pub.senders[0].send(b"\x14\0\0\0\x10\0\0\0" + bytes(12))
        pub.publish(make_event(2))
        assert sub.receive(5) == make_event(2)
    assert notices == [
        f"skipped malformed message on unix socket {sub.path}: "
        "too short for a netlink header and hpfn_mf header (7 bytes)",
        f"skipped malformed message on unix socket {sub.path}: not a hugepfn event (nlmsg_type 0x10) (20 bytes)",
    ]
    assert (sub.received, sub.skipped) == (1, 2)


def test_an_events_dir_open_to_others_is_refused(events_dir, caplog):
    os.mkdir(events_dir, 0o755)
    with pytest.raises(UnsafeEventsDir) as info:
        events.subscriber("unix", events_dir=events_dir)
    assert info.value.strerror == "events directory must be ours and mode 0700 (owner uid %d, mode 0755)" % os.geteuid()
    assert info.value.filename == str(events_dir)
    stray = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stray.bind(str(events_dir / "planted.sock"))
    stray.setblocking(False)
    with caplog.at_level(logging.WARNING, logger="hugepfn.events"), \
         events.publisher("unix", events_dir=events_dir) as pub:
        pub.publish(make_event(1))
        pub.publish(make_event(2))
    with pytest.raises(BlockingIOError):
        stray.recv(65536)  # nothing was sent into the unsafe directory
    stray.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"hugepfn events: not publishing to {events_dir}: events directory must be ours and mode 0700 "
        f"(owner uid {os.geteuid()}, mode 0755)"]


def test_publisher_without_listeners_creates_nothing(events_dir):
    with events.publisher("unix", events_dir=events_dir) as pub:
        assert pub.publish(make_event(1)) == make_event(1)
    assert not events_dir.exists()


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HUGEPFN_EVENTS_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert events.default_events_dir() == tmp_path / "hugepfn" / "events"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert str(events.default_events_dir()) == f"/tmp/hugepfn-{os.geteuid()}/events"
    monkeypatch.setenv("HUGEPFN_EVENTS_DIR", str(tmp_path / "x"))
    assert events.default_events_dir() == tmp_path / "x"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("HUGEPFN_EVENTS_DIR")
    with events.subscriber("unix") as sub:  # creates <xdg>/hugepfn (0700) and events (0700)
        assert sub.path.parent == tmp_path / "hugepfn" / "events"
        assert stat.S_IMODE(os.stat(tmp_path / "hugepfn").st_mode) == 0o700



def test_things_that_are_not_listener_sockets_are_left_alone(events_dir):
    os.mkdir(events_dir, 0o700)
    (events_dir / "dir.sock").mkdir()
    (events_dir / "file.sock").write_text("not a socket")
    with events.subscriber("unix", events_dir=events_dir) as live, \
         events.publisher("unix", events_dir=events_dir) as pub:
        pub.publish(make_event(1))
        assert live.receive(5) == make_event(1)
        assert sorted(p.name for p in events_dir.iterdir()) == sorted(["dir.sock", "file.sock", live.path.name])
