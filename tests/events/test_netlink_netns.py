"""Publisher and listener on NETLINK_USERSOCK inside private network namespaces."""
from __future__ import annotations

import os

from hugepfn.host import events
from hugepfn.host.events import DEFAULT_GROUP

from .conftest import make_event, needs_root, python, spawn

pytestmark = needs_root


def _ready(proc, prefix: str) -> str:
    line = proc.stdout.readline().strip()
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


def test_events_arrive_exactly_and_in_order_inside_a_private_netns(private_netns):
    sent = [make_event(n) for n in range(3)]
    listener = spawn(python("listen_events.py", "netlink", "3", "15"), netns=private_netns)
    publisher = spawn(python("publish_events.py", "netlink"), netns=private_netns)
    try:
        assert _ready(listener, "ready") == f"ready NETLINK_USERSOCK group {DEFAULT_GROUP}"
        _ready(publisher, "ready")
        echoed = []
        for event in sent:
            publisher.stdin.write(event.to_json() + "\n")
            publisher.stdin.flush()
            echoed.append(publisher.stdout.readline().strip())
        publisher.stdin.close()
        assert publisher.wait(15) == 0
        out, err = listener.communicate(timeout=15)
    finally:
        for proc in (listener, publisher):
            proc.kill()
            proc.wait()
    published = [events.MemoryFailureEvent.from_json(line) for line in echoed]
    assert published == sent  # fully specified events keep seq/timestamp
    assert len({e.publisher_pid for e in published}) == 1 and published[0].publisher_pid > 0
    assert listener.returncode == 0, err
    assert out.splitlines() == echoed     # what the listener decoded, the publisher's pid included
    assert [events.MemoryFailureEvent.from_json(line) for line in out.splitlines()] == sent
    assert err == ""


def test_every_listener_in_the_group_gets_each_event(private_netns):
    with events.subscriber("netlink", netns=private_netns) as first, \
         events.subscriber("netlink", netns=private_netns) as second, \
         events.publisher("netlink", netns=private_netns) as pub:
        stamped = [pub.publish(make_event(n, seq=None, timestamp_ns=None)) for n in range(2)]
        assert [first.receive(5), first.receive(5)] == stamped
        assert [second.receive(5), second.receive(5)] == stamped
        assert stamped[1].seq == stamped[0].seq + 1
        assert first.receive(0.05) is None


def test_a_private_netns_keeps_its_events_and_the_test_process_stays_put(private_netns):
    own_netns = os.stat("/proc/self/ns/net").st_ino
    marker = "0000:ee:1f.7"  # other programs on this host may use the group; ignore their events
    with events.subscriber("netlink") as outside, \
         events.subscriber("netlink", netns=private_netns) as inside, \
         events.publisher("netlink", netns=private_netns) as pub:
        assert inside.describe() == f"NETLINK_USERSOCK group {DEFAULT_GROUP} in netns {private_netns}"
        stamped = pub.publish(make_event(7, device=marker))
        assert inside.receive(5) == stamped
        leaked = []
        while (event := outside.receive(0.3)) is not None:
            leaked.append(event)
        assert [e for e in leaked if e.device == marker] == []
    assert os.stat("/proc/self/ns/net").st_ino == own_netns


def test_publish_from_another_thread_uses_the_same_socket(private_netns):
    import threading

    with events.subscriber("netlink", netns=private_netns) as sub, \
         events.publisher("netlink", netns=private_netns) as pub:
        results = []
        worker = threading.Thread(target=lambda: results.append(pub.publish(make_event(9))))
        worker.start()
        worker.join(10)
        assert results == [make_event(9)]
        assert sub.receive(5) == make_event(9)


def test_a_listener_that_falls_behind_is_told_once_and_keeps_going(private_netns):
    import socket

    notices = []
    with events.subscriber("netlink", netns=private_netns, on_notice=notices.append) as slow, \
         events.publisher("netlink", netns=private_netns) as pub:
        shrink = socket.socket(fileno=os.dup(slow.fileno()))
        shrink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for a few events
        shrink.close()
        sent = [pub.publish(make_event(1, seq=n)) for n in range(200)]
        got = []
        while (event := slow.receive(0.2)) is not None:
            got.append(event.seq)
        pub.publish(make_event(1, seq=999))
        assert slow.receive(5).seq == 999  # still subscribed after the overrun
    assert 0 < len(got) < len(sent)
    assert got == sorted(got) and got[0] == 0
    assert notices == [f"events lost on NETLINK_USERSOCK group {DEFAULT_GROUP} in netns {private_netns}: "
                       "receive buffer overrun (ENOBUFS)"]
