"""The sans-IO vfio-user server engine (h11's shape, libvfio-user's dispatcher).

The engine never touches a socket.  Feed it what arrived::

    engine.receive_data(chunk, fds)      # b"" means the peer closed
    for data, fds in engine.data_to_send(): sendmsg(data, SCM_RIGHTS=fds)
    for event in engine.events(): ...

File descriptors belong to the message whose bytes start the chunk they arrived
with; a transport that reads no further than the end of the message being assembled
(``next_read_size``) gets this exactly as the kernel delivers SCM_RIGHTS, and one whose
read may run past it feeds the read to ``receive_read``, which gives them to the message
the read ended in.  Fds the engine does not keep are
closed; fds in ``data_to_send`` stay owned by the device (the kernel duplicates
them into the peer).

Every command handler raises ``CommandError`` (an errno) on failure; ``message_received``
is the one place that turns an errno into a header-only error reply.  A message is
answered whenever a reply is possible: unknown header flags, an unknown message type
and more fds than ``max_msg_fds`` get EINVAL and the connection goes on.  Only two
things also close it (after the EINVAL reply): a ``msg_size`` that cannot be framed
(below the header size or above ``max_msg_size``: where the next message starts is
unknowable), and any failure before VERSION has succeeded (as libvfio-user, and as
the specification says for an unsupported major: "closes the connection").
docs/vfio-user-conformance.md lists where this differs from libvfio-user and why.
"""
from __future__ import annotations

import enum
import errno
import logging
from collections import deque
from typing import Callable

from construct import ConstructError

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import (
    VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
)
from hugepfn.abi.vfio_user import Command

from ..interface import ClientLimits, ServedDevice
from .dma import DmaTable
from .errors import CommandError, LocalProtocolError, einval
from .events import (
    CommandFailed, DeviceWasReset, Disconnected, DmaMapped, DmaUnmapped, IrqsSet, Negotiated, PeerReply,
)
from .framing import Framer, Unframeable
from .framing import close_fds as _close_all
from .irq import IrqTable

log = logging.getLogger("hugepfn.vfio_user")

SERVER_MAJOR = 0
SERVER_MINOR = 2          # as libvfio-user; the reply is min(proposed, ours), so QEMU's 0.0 gets 0.0
DEFAULT_CLIENT_MAX_XFER = 1 << 20


class State(enum.Enum):
    AWAIT_VERSION = "await-version"
    READY = "ready"
    CLOSED = "closed"


_CLIENT_COMMANDS = frozenset(Command) - {Command.VERSION, Command.DMA_READ, Command.DMA_WRITE}

# Which commands each state accepts.  Anything else gets EINVAL.
ALLOWED: dict[State, frozenset] = {
    State.AWAIT_VERSION: frozenset({Command.VERSION}),
    State.READY: _CLIENT_COMMANDS,
    State.CLOSED: frozenset(),
}

# Capabilities a client may propose, and the JSON type each must have.
_CAP_TYPES = {"max_msg_fds": int, "max_data_xfer_size": int, "max_dma_maps": int, "pgsizes": int,
              "migration": dict, "twin_socket": dict, "write_multiple": bool}

Reply = tuple[bytes, tuple[int, ...]]


class ServerEngine(Framer):
    """One client connection of a vfio-user server, without I/O: a Framer whose whole messages
    go to the dispatcher (``message_received``)."""

    def __init__(self, device: ServedDevice, *, max_msg_fds: int = 16,
                 max_data_xfer_size: int = 1 << 20, max_dma_maps: int = 65535):
        self.device = device
        self.state = State.AWAIT_VERSION
        self._allowed = ALLOWED[self.state]       # follows self.state (an Enum hashes in Python)
        self.max_msg_fds = max_msg_fds                # most fds we accept in one message
        self.server_max_xfer = max_data_xfer_size     # largest count we accept
        self.max_xfer = max_data_xfer_size            # negotiated bound on REGION_READ/WRITE counts
        self.client_limits = ClientLimits()
        super().__init__(wire.HEADER_SIZE + wire.REGION_ACCESS.size + max_data_xfer_size + 4096)
        self.dma = DmaTable(max_dma_maps)
        self.irqs = IrqTable({i: device.irq_info(i).count for i in range(device.num_irqs)})
        self._region_sizes = [device.region_info(i).size for i in range(device.num_regions)]
        self._out: list[Reply] = []
        self._events: deque = deque()
        self._next_id = 0
        self._outstanding: dict[int, int] = {}    # our DMA_READ/WRITE msg_id -> cmd
        self._handlers: dict[int, Callable[[bytes, list[int]], Reply]] = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_get_info,
            Command.DEVICE_GET_REGION_INFO: self._region_info,
            Command.DEVICE_GET_REGION_IO_FDS: self._region_io_fds,
            Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._device_reset,
            Command.DEVICE_FEATURE: self._device_feature,
        }

    # ------------------------------------------------------------------ I/O side
    @property
    def interrupt_sink(self):
        """The device's InterruptSink for this connection: eventfd_write(1)."""
        return self.irqs.raise_irq

    def unframeable(self, error: Unframeable) -> None:
        """A msg_size that cannot be: answer it, then close (the next message cannot be found)."""
        self._fail(error.msg_id, error.cmd, error.flags, errno.EINVAL, str(error))
        self.connection_lost(f"unframeable message: id={error.msg_id} cmd={error.cmd} {error}")

    def data_to_send(self) -> list[Reply]:
        out, self._out = self._out, []
        return out

    def events(self) -> list:
        out = list(self._events)
        self._events.clear()
        return out

    def connection_lost(self, reason: str = "connection lost") -> None:
        """Drop every DMA window and IRQ eventfd; the device keeps its state."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._allowed = ALLOWED[self.state]
        self.reset_framing()
        self.dma.unmap_all()
        self.irqs.close()
        self._outstanding.clear()
        self._events.append(Disconnected(reason))

    # ------------------------------------------------------------ dispatcher
    def message_received(self, msg_id: int, cmd: int, flags: int, error_no: int, payload: bytes, fds: list[int],
                         fds_lost: bool = False) -> None:
        """The dispatcher: the one place an errno becomes a reply.  A reply from the peer is
        never answered: ours to a DMA_READ/WRITE, or ignored."""
        if flags & wire.MSG_TYPE_MASK == wire.MSG_TYPE_REPLY:
            self._peer_reply(msg_id, cmd, error_no, payload)
            _close_all(fds)
            return
        try:
            if flags & ~wire.FLAG_NO_REPLY:          # anything but a plain command (the common case)
                if flags & wire.MSG_TYPE_MASK != wire.MSG_TYPE_COMMAND:
                    raise einval(f"message type {flags & wire.MSG_TYPE_MASK} is neither command nor reply")
                if flags & ~wire.KNOWN_HEADER_FLAGS:
                    raise einval(f"unknown header flags {flags & ~wire.KNOWN_HEADER_FLAGS:#x}")
            if cmd not in self._allowed:
                raise einval(f"{_name(cmd)} not allowed in state {self.state.value}")
            if (fds or fds_lost) and (fds_lost or len(fds) > self.max_msg_fds):
                raise einval(f"{'more than ' if fds_lost else ''}{len(fds)} fds, "
                             f"more than max_msg_fds {self.max_msg_fds}")
            handler = self._handlers.get(cmd)
            if handler is None:
                raise einval(f"{_name(cmd)} is not supported")
            reply, reply_fds = handler(payload, fds)
        except CommandError as exc:
            self._fail(msg_id, cmd, flags, exc.errno, exc.strerror)
        except OSError as exc:   # raised by the device: its errno is the answer
            self._fail(msg_id, cmd, flags, exc.errno or errno.EIO, str(exc))
        except (ConstructError, ValueError, OverflowError) as exc:
            self._fail(msg_id, cmd, flags, errno.EINVAL, f"malformed {_name(cmd)}: {exc}")
        except Exception as exc:  # a device bug must not take the server down
            # One line in the log (no traceback reaches it); the traceback at debug level.
            log.error("vfio-user: %s failed inside the device: %s: %s", _name(cmd), type(exc).__name__, exc)
            log.debug("vfio-user: %s failure", _name(cmd), exc_info=True)
            self._fail(msg_id, cmd, flags, errno.EIO, f"{type(exc).__name__}: {exc}")
        else:
            if not flags & wire.FLAG_NO_REPLY:     # wire.message(), inline: once per message
                self._out.append((wire.HEADER.pack(msg_id, cmd, wire.HEADER_SIZE + len(reply), wire.MSG_TYPE_REPLY, 0)
                                  + reply, reply_fds))
        finally:
            if fds:
                _close_all(fds)   # handlers remove the fds they keep

    def _fail(self, msg_id: int, cmd: int, flags: int, err: int, message: str) -> None:
        self._events.append(CommandFailed(msg_id, cmd, err, message))
        log.debug("vfio-user: %s -> %s: %s", _name(cmd), errno.errorcode.get(err, err), message)
        if not flags & wire.FLAG_NO_REPLY:
            self._out.append((wire.message(msg_id, cmd, b"", wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, err), ()))
        if self.state is State.AWAIT_VERSION:
            # As libvfio-user: a client that cannot negotiate is answered, then dropped.
            self.connection_lost(f"negotiation failed: {message}")

    # ------------------------------------------------------------- handlers
    def _version(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < 4:
            raise einval("VERSION: short payload")
        proposal = wire.Version.parse(payload)
        if proposal.major != SERVER_MAJOR:
            raise einval(f"VERSION: unsupported major {proposal.major}")
        document = proposal.capabilities or {}
        caps = document.get("capabilities", {})
        if not isinstance(caps, dict):
            raise einval("VERSION: capabilities is not an object")
        for key, kind in _CAP_TYPES.items():
            if key in caps and (not isinstance(caps[key], kind)
                                or (kind is int and (isinstance(caps[key], bool) or caps[key] < 0))):
                raise einval(f"VERSION: bad capability {key}={caps[key]!r}")
        client_xfer = caps.get("max_data_xfer_size", DEFAULT_CLIENT_MAX_XFER)
        if client_xfer < 1:
            raise einval("VERSION: max_data_xfer_size must be positive")
        if "pgsizes" in caps and not caps["pgsizes"] & 4096:
            raise CommandError(errno.ENOTSUP, "VERSION: only 4 KiB DMA pages are supported")
        # The reply's capabilities are a subset of the proposed ones, each no larger.
        reply: dict = {}
        if "max_msg_fds" in caps:
            reply["max_msg_fds"] = self.max_msg_fds
        if "max_data_xfer_size" in caps:
            reply["max_data_xfer_size"] = min(self.server_max_xfer, client_xfer)
        if "max_dma_maps" in caps:
            reply["max_dma_maps"] = min(self.dma.max_maps, caps["max_dma_maps"])
            self.dma.max_maps = reply["max_dma_maps"]
        if "pgsizes" in caps:
            reply["pgsizes"] = 4096
        self.max_xfer = min(self.server_max_xfer, client_xfer)
        self.client_limits = ClientLimits(max_msg_fds=caps.get("max_msg_fds", 1),
                                          max_data_xfer_size=client_xfer,
                                          extra={k: v for k, v in caps.items()
                                                 if k not in ("max_msg_fds", "max_data_xfer_size")})
        minor = min(proposal.minor, SERVER_MINOR)
        self.state = State.READY
        self._allowed = ALLOWED[self.state]
        self._events.append(Negotiated(SERVER_MAJOR, minor, dict(caps), reply))
        return wire.Version.build({"major": SERVER_MAJOR, "minor": minor,
                                   "capabilities": {"capabilities": reply}}), ()

    def _dma_map(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) != wire.DmaMap.sizeof():
            raise einval(f"DMA_MAP: payload of {len(payload)} bytes")
        req = wire.DmaMap.parse(payload)
        if req.argsz != len(payload):
            raise einval(f"DMA_MAP: argsz {req.argsz}")
        if len(fds) > 1:
            raise einval(f"DMA_MAP: {len(fds)} fds")
        self.dma.map(req.address, req.size, req.flags, req.offset, fds[0] if fds else None)
        self._events.append(DmaMapped(req.address, req.size, req.flags, bool(fds)))
        return b"", ()

    def _dma_unmap(self, payload: bytes, fds: list[int]) -> Reply:
        size = wire.DmaUnmap.sizeof()
        if len(payload) < size:
            raise einval(f"DMA_UNMAP: payload of {len(payload)} bytes")
        req = wire.DmaUnmap.parse(payload[:size])
        # argsz is the largest reply the client accepts (the reply is the 24-byte
        # entry); libvfio-user bounds it by its max_data_xfer_size.
        if not size <= req.argsz <= self.server_max_xfer:
            raise einval(f"DMA_UNMAP: argsz {req.argsz} outside {size}..{self.server_max_xfer}")
        if req.flags == wire.DMA_UNMAP_FLAG_ALL:
            if req.address or req.size:
                raise einval("DMA_UNMAP: UNMAP_ALL with a range")
            count = self.dma.unmap_all()
            self._events.append(DmaUnmapped(0, 0, count))
        elif req.flags:
            raise einval(f"DMA_UNMAP: unsupported flags {req.flags:#x}")
        else:
            self.dma.unmap(req.address, req.size)
            self._events.append(DmaUnmapped(req.address, req.size))
        return payload[:size], ()

    def _device_get_info(self, payload: bytes, fds: list[int]) -> Reply:
        self._fixed(wire.DeviceInfo, payload, "DEVICE_GET_INFO")
        dev = self.device
        return wire.DeviceInfo.build({"argsz": wire.DeviceInfo.sizeof(), "flags": dev.device_flags,
                                      "num_regions": dev.num_regions, "num_irqs": dev.num_irqs}), ()

    def _region_info(self, payload: bytes, fds: list[int]) -> Reply:
        req = self._fixed(wire.RegionInfo, payload, "DEVICE_GET_REGION_INFO")
        index = self._region_index(req.index)
        info = self.device.region_info(index)
        if info.size == 0:
            return wire.build_region_info(index, 0, 0, 0, None), ()
        flags = info.flags & ~VFIO_REGION_INFO_FLAG_CAPS
        areas = None
        if info.fd is not None:
            flags |= VFIO_REGION_INFO_FLAG_MMAP
            # As libvfio-user: an fd-backed region always carries a sparse cap, the
            # device's areas or one area covering the whole region.
            areas = [(a.offset, a.size) for a in info.sparse_areas] or [(0, info.size)]
        full = wire.build_region_info(index, info.size, flags, info.fd_offset, areas)
        if req.argsz < len(full):
            # Step one of the argsz dance: the fixed struct with the size needed,
            # no caps and no fd; the client asks again with a bigger argsz.
            short = wire.RegionInfo.build({"argsz": len(full), "flags": flags, "index": index,
                                           "cap_offset": 0, "size": info.size, "offset": info.fd_offset})
            return short, ()
        return full, ((info.fd,) if info.fd is not None else ())

    def _region_io_fds(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < wire.REGION_IO_FDS_FIXED:
            raise einval("DEVICE_GET_REGION_IO_FDS: short payload")
        req = wire.RegionIoFdsRequest.parse(payload[:wire.REGION_IO_FDS_FIXED])
        if req.argsz < wire.REGION_IO_FDS_FIXED or req.flags or req.count:
            raise einval("DEVICE_GET_REGION_IO_FDS: bad argsz/flags/count")
        index = self._region_index(req.index)
        # The device exports no ioeventfds: every region has zero sub-regions.
        return wire.RegionIoFds.build({"argsz": wire.REGION_IO_FDS_FIXED, "flags": 0, "index": index,
                                       "count": 0, "sub_regions": []}), ()

    def _irq_info(self, payload: bytes, fds: list[int]) -> Reply:
        req = self._fixed(wire.IrqInfo, payload, "DEVICE_GET_IRQ_INFO")
        if req.index >= self.device.num_irqs:
            raise einval(f"DEVICE_GET_IRQ_INFO: bad index {req.index}")
        info = self.device.irq_info(req.index)
        return wire.IrqInfo.build({"argsz": wire.IrqInfo.sizeof(), "flags": info.flags,
                                   "index": req.index, "count": info.count}), ()

    def _set_irqs(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < wire.SET_IRQS_FIXED:
            raise einval("DEVICE_SET_IRQS: short payload")
        req = wire.SetIrqs.parse(payload)
        if req.argsz != len(payload):
            raise einval(f"DEVICE_SET_IRQS: argsz {req.argsz} != payload {len(payload)}")
        taken = list(fds)
        fds.clear()                                  # the IRQ table owns them now
        nfds = len(taken)
        changed = self.irqs.set_irqs(req.flags, req.index, req.start, req.count, req.data, taken)
        if changed is not None:
            self.device.irq_state_changed(*changed)
        self._events.append(IrqsSet(req.index, req.start, req.count, req.flags, nfds))
        return b"", ()

    def _region_read(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < wire.REGION_ACCESS.size:
            raise einval(f"REGION_READ: payload of {len(payload)} bytes")
        # Bytes after the request struct are ignored, as libvfio-user does.
        offset, region, count = wire.REGION_ACCESS.unpack_from(payload)
        access = payload if len(payload) == wire.REGION_ACCESS.size else payload[:wire.REGION_ACCESS.size]
        self._check_access(region, offset, count, "REGION_READ")
        if not count:           # a no-op that succeeds, as in libvfio-user
            return access, ()
        data = self.device.region_read(region, offset, count)
        if len(data) != count:
            raise CommandError(errno.EIO, f"REGION_READ: device returned {len(data)} of {count} bytes")
        return access + (data if type(data) is bytes else bytes(data)), ()

    def _region_write(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < wire.REGION_ACCESS.size:
            raise einval(f"REGION_WRITE: payload of {len(payload)} bytes")
        offset, region, count = wire.REGION_ACCESS.unpack_from(payload)
        if len(payload) != wire.REGION_ACCESS.size + count:
            raise einval(f"REGION_WRITE: count {count} but {len(payload) - 16} data bytes")
        self._check_access(region, offset, count, "REGION_WRITE")
        if not count:
            return payload, ()
        self.device.region_write(region, offset, payload[wire.REGION_ACCESS.size:])
        if region == VFIO_PCI_CONFIG_REGION_INDEX:
            self.refresh_regions()     # a Resizable BAR control write may resize a BAR
        return payload[:wire.REGION_ACCESS.size], ()

    def _device_reset(self, payload: bytes, fds: list[int]) -> Reply:
        if payload:
            raise einval("DEVICE_RESET: unexpected payload")
        self.device.reset()
        self._events.append(DeviceWasReset())
        return b"", ()

    def _device_feature(self, payload: bytes, fds: list[int]) -> Reply:
        if len(payload) < wire.DEVICE_FEATURE_FIXED:
            raise einval("DEVICE_FEATURE: short payload")
        req = wire.DeviceFeature.parse(payload)
        ops = req.flags & ~wire.DEVICE_FEATURE_MASK
        if ops & ~(wire.DEVICE_FEATURE_GET | wire.DEVICE_FEATURE_SET | wire.DEVICE_FEATURE_PROBE) or not ops:
            raise einval(f"DEVICE_FEATURE: bad flags {req.flags:#x}")
        if ops & wire.DEVICE_FEATURE_GET and ops & wire.DEVICE_FEATURE_SET and not ops & wire.DEVICE_FEATURE_PROBE:
            raise einval("DEVICE_FEATURE: GET and SET together only with PROBE")
        # argsz is the largest reply the client accepts: a GET may offer more room than
        # its 8-byte request; SET and PROBE are answered with the request itself.
        needed = wire.DEVICE_FEATURE_FIXED if ops & wire.DEVICE_FEATURE_GET and not ops & wire.DEVICE_FEATURE_PROBE \
            else len(payload)
        if req.argsz < needed:
            raise einval(f"DEVICE_FEATURE: argsz {req.argsz} < {needed}, the size of the reply")
        # No migration and no DMA dirty logging (QEMU's vfio-user-pci does not migrate
        # yet).  EINVAL, as libvfio-user without migration callbacks answers.
        raise einval(f"DEVICE_FEATURE {req.flags & wire.DEVICE_FEATURE_MASK}: not supported by this device")

    # --------------------------------------------------------------- checks
    @staticmethod
    def _fixed(fmt, payload: bytes, name: str):
        size = fmt.sizeof()
        if len(payload) < size:
            raise einval(f"{name}: payload of {len(payload)} bytes, need {size}")
        req = fmt.parse(payload[:size])
        if req.argsz < size:
            raise einval(f"{name}: argsz {req.argsz} < {size}")
        return req

    def _region_index(self, index: int) -> int:
        if index >= self.device.num_regions:
            raise einval(f"bad region index {index}")
        return index

    def _check_access(self, region: int, offset: int, count: int, name: str) -> None:
        if region >= len(self._region_sizes):
            raise einval(f"{name}: bad region {region}")
        if count > self.max_xfer:
            raise einval(f"{name}: count {count} > max_data_xfer_size {self.max_xfer}")
        if offset + count > self._region_sizes[region]:
            raise einval(f"{name}: {offset:#x}+{count:#x} outside region {region} "
                         f"of {self._region_sizes[region]:#x} bytes")

    # -------------------------------------------- server -> client DMA messages
    def send_dma_read(self, address: int, count: int) -> int:
        """Queue a DMA_READ to the client (for windows mapped without an fd)."""
        return self._request(Command.DMA_READ, wire.DMA_ACCESS.pack(address, count), count)

    def send_dma_write(self, address: int, data: bytes) -> int:
        return self._request(Command.DMA_WRITE, wire.DMA_ACCESS.pack(address, len(data)) + bytes(data),
                             len(data))

    def _request(self, cmd: int, payload: bytes, count: int) -> int:
        if self.state is not State.READY:
            raise LocalProtocolError(f"{_name(cmd)} before negotiation or after close")
        if count > self.client_limits.max_data_xfer_size:
            raise LocalProtocolError(f"{_name(cmd)}: {count} bytes > client's max_data_xfer_size")
        msg_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF
        self._outstanding[msg_id] = cmd
        self._out.append((wire.message(msg_id, cmd, payload), ()))
        return msg_id

    def _peer_reply(self, msg_id: int, cmd: int, error_no: int, payload: bytes) -> None:
        if self._outstanding.get(msg_id) != cmd:
            log.debug("vfio-user: ignoring unsolicited reply id=%d cmd=%d", msg_id, cmd)
            return
        del self._outstanding[msg_id]
        self._events.append(PeerReply(msg_id, cmd, error_no, payload))

    # ------------------------------------------------------------------ misc
    def refresh_regions(self) -> None:
        """Re-read region sizes (after the device changed a BAR size, e.g. resizable BAR)."""
        self._region_sizes = [self.device.region_info(i).size for i in range(self.device.num_regions)]


def _name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"command {cmd}"


__all__ = ["ServerEngine", "State", "ALLOWED", "SERVER_MAJOR", "SERVER_MINOR", "VFIO_DEVICE_FLAGS_PCI"]
