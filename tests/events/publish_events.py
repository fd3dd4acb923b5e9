"""Test helper: publish the JSON-line events read from stdin, print each stamped event.

`python publish_events.py TRANSPORT [EVENTS_DIR]`; prints "ready" once the publisher
exists, then one JSON line per published event.  Optionally, a stdin line
`raw:<hex>` is sent as raw bytes on every transport (malformed-message tests).
"""
import sys

from hugepfn.host import events

if __name__ == "__main__":
    transport = sys.argv[1]
    events_dir = sys.argv[2] if len(sys.argv) > 2 else None
    with events.publisher(transport, events_dir=events_dir) as pub:
        print("ready", flush=True)
        for line in sys.stdin:
            line = line.strip()
            if line.startswith("raw:"):
                for sender in pub.senders:
                    sender.send(bytes.fromhex(line[4:]))
                print("raw", flush=True)
            elif line:
                stamped = pub.publish(events.MemoryFailureEvent.from_json(line))
                print(stamped.to_json(), flush=True)
