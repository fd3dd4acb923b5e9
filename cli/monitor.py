"""`hugepfn monitor`: print memory-failure events as the host publishes them.

Data goes to stdout (one line per event, text or JSON lines); status goes to stderr:
one line when listening starts (and, on the fallback, why netlink was not used),
one line per malformed message skipped.
"""
from __future__ import annotations

import argparse
import sys
import time

from hugepfn.host.events.constants import DEFAULT_GROUP, Transport, default_events_dir

DESCRIPTION = """\
Subscribe to memory-failure events and print one line per event.

Events are netlink messages on NETLINK_USERSOCK multicast group %(group)d (joining
needs CAP_NET_ADMIN, i.e. root).  Where netlink is not permitted, --transport auto
says why on stderr and listens on the unix-socket fallback instead
(%(fallback)s).  See docs/events.md for the message format.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="print memory-failure events (netlink, unix fallback)",
        description=DESCRIPTION % {"group": DEFAULT_GROUP, "fallback": default_events_dir()},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="print each event as one JSON object per line")
    parser.add_argument("--transport", choices=[t.value for t in Transport],
                        default="auto",
                        help="auto (netlink, else unix fallback), netlink or unix (default: auto)")
    parser.add_argument("--count", type=_positive_int, metavar="N",
                        help="exit after N events (exit status 1 if --timeout ends first)")
    parser.add_argument("--timeout", type=_positive_float, metavar="S",
                        help="stop after S seconds")
    parser.add_argument("--group", type=int, default=DEFAULT_GROUP, metavar="G",
                        help=f"NETLINK_USERSOCK multicast group 1..32 (default: {DEFAULT_GROUP})")
    parser.add_argument("--events-dir", metavar="DIR",
                        help="the unix-fallback events directory (default: $HUGEPFN_EVENTS_DIR, else "
                             "$XDG_RUNTIME_DIR/hugepfn/events, else /tmp/hugepfn-UID/events)")
    parser.add_argument("--netns", metavar="NAME",
                        help="listen on netlink inside this named network namespace (ip netns; needs root)")
    parser.set_defaults(func=run)


def _status(text: str) -> None:
    print(f"hugepfn monitor: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from hugepfn.host.events.monitor import Monitor

    with Monitor(args.transport, group=args.group, netns=args.netns, events_dir=args.events_dir,
                 on_notice=_status) as monitor:
        _status(monitor.status)
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        shown = 0
        while args.count is None or shown < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            event = monitor.receive(remaining)
            if event is None:
                break  # timed out
            print(event.to_json() if args.json else event.summary(), flush=True)
            shown += 1
    if args.count is not None and shown < args.count:
        _status(f"timed out after {args.timeout:g} s with {shown} of {args.count} events")
        return 1
    return 0
