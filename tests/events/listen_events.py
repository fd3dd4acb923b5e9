"""Test helper: subscribe, print "ready", then print N received events as JSON lines.

`python listen_events.py TRANSPORT COUNT TIMEOUT [EVENTS_DIR]`; malformed-message
notices go to stderr.  Exit status 1 if fewer than COUNT events arrive in time.
"""
import sys
import time

from hugepfn.host import events

if __name__ == "__main__":
    transport, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    events_dir = sys.argv[4] if len(sys.argv) > 4 else None
    notice = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with events.subscriber(transport, events_dir=events_dir, on_notice=notice) as sub:
        print(f"ready {sub.describe()}", flush=True)
        deadline = time.monotonic() + timeout
        for _ in range(count):
            event = sub.receive(max(0.0, deadline - time.monotonic()))
            if event is None:
                sys.exit(1)
            print(event.to_json(), flush=True)
