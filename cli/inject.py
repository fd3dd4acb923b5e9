"""`hugepfn inject`: poison memory of a running `hugepfn serve` through its control socket.

    hugepfn inject --socket /run/user/1000/gpu0.sock --bar 2 --offset 0x123000 --granularity 4K
    hugepfn inject --socket /run/user/1000/gpu0.sock --dpa 0x4000123000 --json

The device marks the naturally aligned block bad, persists it, queues a CPER record in its
BAR0 error queue and raises its error interrupt; the attached host (QEMU's guest, the host
model) reads the record from there.  One line (or one JSON object) says what was poisoned.
"""
from __future__ import annotations

import json

from hugepfn.abi.cper import MEMORY_ERROR_TYPES
from hugepfn.device.control import CONTROL_SUFFIX, ControlClient, control_path, describe_injection
from hugepfn.device.poison import DEFAULT_GRANULARITY


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inject", help="poison device memory of a running `hugepfn serve`",
        description="Poison memory of a served device: the device queues an error record "
                    "(CPER memory error section) in its BAR0 error queue and raises its error interrupt.")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help=f"the vfio-user socket given to `hugepfn serve` (its control socket is PATH{CONTROL_SUFFIX})")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bar", type=int, metavar="N", help="memory BAR index (with --offset)")
    where.add_argument("--dpa", metavar="ADDR", help="device physical address (instead of --bar/--offset)")
    parser.add_argument("--offset", metavar="X", help="byte offset inside the BAR (0x... or a size such as 4M)")
    parser.add_argument("--granularity", default=DEFAULT_GRANULARITY, metavar="SIZE",
                        help="blast radius the hardware reports: a power of two 64 .. 1G (default: 4K)")
    parser.add_argument("--error-type", default="multi-ecc", choices=tuple(MEMORY_ERROR_TYPES),
                        help="CPER memory error type (default: multi-ecc)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=run)


def _control(socket: str) -> str:
    return socket if socket.endswith(CONTROL_SUFFIX) else control_path(socket)


def run(args) -> int:
    if args.bar is not None and args.offset is None:
        raise ValueError("--bar needs --offset")
    if args.dpa is not None and args.offset is not None:
        raise ValueError("--offset goes with --bar, not with --dpa")
    with ControlClient(_control(args.socket)) as client:
        reply = client.inject(bar=args.bar, offset=args.offset, dpa=args.dpa, granularity=args.granularity,
                              error_type=args.error_type)
    del reply["ok"], reply["op"]
    print(json.dumps(reply) if args.json else describe_injection(reply))
    return 0
