"""`hugepfn status`: what a running `hugepfn serve` holds — BARs, backend, attached client,
poisoned memory, the error queue — asked over its control socket."""
from __future__ import annotations

import json

from hugepfn.abi.sizes import format_size
from hugepfn.device.control import CONTROL_SUFFIX, ControlClient, control_path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="what a running `hugepfn serve` holds (BARs, client, poison, error queue)",
        description="Ask a running `hugepfn serve` what it holds, through its control socket.")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help=f"the vfio-user socket given to `hugepfn serve` (its control socket is PATH{CONTROL_SUFFIX})")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object")
    parser.set_defaults(func=run)


def render(status: dict) -> str:
    if status["attached"] is None:
        client = "unknown"
    else:
        client = "attached" if status["attached"] else "none"
    lines = [f"profile {status['profile']}, backend {status['backend'] or 'unknown'}, client {client}"
             + (f" ({status['clients_served']} served so far)" if status.get("clients_served") is not None else "")]
    vu = status.get("vfio_user")
    if vu is not None:
        facts = [f"{len(vu.get('dma_windows', []))} DMA window(s)"]
        if "irq_eventfds" in vu:            # libvfio-user keeps its eventfds to itself
            facts.append(f"{len(vu['irq_eventfds'])} interrupt eventfd(s) wired")
        facts.append(f"{vu.get('clients_refused', 0)} client(s) refused")
        lines.append("  vfio-user: " + ", ".join(facts))
    for bar in status["bars"]:
        extra = ""
        if bar["kind"] == "memory":
            extra = f", memory {format_size(bar['memory_size'])} at dpa {bar['dpa_base']:#x}"
        lines.append(f"  BAR{bar['index']}: {bar['kind']} {format_size(bar['size'])} {bar['access']}{extra}")
    ranges = status["poisoned"]
    lines.append(f"poisoned: {len(ranges)} range(s), {status['poisoned_pages']} page(s)")
    for r in ranges[:32]:
        lines.append(f"  BAR{r['bar']} offset {r['offset']:#x} length {format_size(r['length'])} dpa {r['dpa']:#x}")
    if len(ranges) > 32:
        lines.append(f"  ... {len(ranges) - 32} more (--json lists all)")
    q = status["error_queue"]
    lines.append(f"error queue: {q['count']} of {q['capacity']} record(s) waiting, {q['lost']} lost, "
                 f"last record #{q['sequence']}")
    return "\n".join(lines)


def run(args) -> int:
    path = args.socket if args.socket.endswith(CONTROL_SUFFIX) else control_path(args.socket)
    with ControlClient(path) as client:
        status = client.status()
    del status["ok"], status["op"]
    print(json.dumps(status) if args.json else render(status))
    return 0
