"""A vfio-user client: what QEMU's vfio-user-pci does, for the host model and for tests.

It attaches to a server socket, negotiates, reads device/region/IRQ info, mmaps
the sparse areas of each BAR, reads and writes config space and trapped regions,
wires eventfds to IRQs, DMA_MAPs memfds of its own, resets the device, and
answers the server's DMA_READ/DMA_WRITE from its own windows while it waits for
a reply.
"""
from __future__ import annotations

import errno
import mmap
import os
import socket
from dataclasses import dataclass
from typing import NamedTuple

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_PCI_CONFIG_REGION_INDEX
from hugepfn.abi.vfio_user import Command
from hugepfn.device.vfio_user.framing import MessageReader, Unframeable
from hugepfn.device.vfio_user.transport import connect_unix, send_with_fds

MAX_MESSAGE = (64 << 20) + 4096       # the largest server message the client frames
_FIRST_READ = 4096                     # what one recvmsg() of a reply asks for (MessageReader)
CLIENT_CAPABILITIES = {
    "max_msg_fds": 16,
    "max_data_xfer_size": 1 << 20,
    "max_dma_maps": 65535,
    "pgsizes": 4096,
}


class VfioUserError(OSError):
    """The server answered a command with an error reply (``errno`` is its error_no)."""


class VfioUserProtocolError(ConnectionError):
    """The server's bytes make no sense (or it went away)."""


class Reply(NamedTuple):
    """One message from the server (a tuple: one is built per trapped access)."""
    msg_id: int
    cmd: int
    flags: int
    error_no: int
    payload: bytes
    fds: tuple[int, ...] = ()


_new_tuple = tuple.__new__


@dataclass
class Region:
    index: int
    size: int
    flags: int
    fd_offset: int
    fd: int | None
    sparse_areas: tuple[tuple[int, int], ...] = ()
    argsz_requests: int = 1        # how many GET_REGION_INFO it took (the argsz dance)

    @property
    def mmappable(self) -> bool:
        return self.fd is not None and bool(self.flags & 4)


@dataclass
class MappedArea:
    region: int
    offset: int            # within the region
    size: int
    mapping: mmap.mmap


@dataclass
class _DmaWindow:
    address: int
    size: int
    fd: int | None
    mapping: mmap.mmap | None


@dataclass
class DeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int


@dataclass
class IrqInfo:
    index: int
    flags: int
    count: int


class VfioUserClient:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._reader = MessageReader(sock, MAX_MESSAGE, max_fds=16, first_read=_FIRST_READ)
        self._next_id = 0
        self.server_capabilities: dict = {}
        self.server_version: tuple[int, int] | None = None
        self.max_data_xfer_size = 1 << 20
        self.server_max_msg_fds = 1
        self.device: DeviceInfo | None = None
        self.regions: dict[int, Region] = {}
        self.mapped: dict[int, list[MappedArea]] = {}
        self.eventfds: dict[tuple[int, int], int] = {}
        self._dma: list[_DmaWindow] = []
        self.server_requests_handled = 0   # DMA_READ/WRITE the server sent us

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def connect(cls, path: str | os.PathLike, timeout: float | None = 10.0) -> "VfioUserClient":
        return cls(connect_unix(path, timeout=timeout))

    @classmethod
    def attach(cls, path: str | os.PathLike, timeout: float | None = 10.0) -> "VfioUserClient":
        """Connect, negotiate, and read the device, region and IRQ info (as QEMU's realize)."""
        client = cls.connect(path, timeout)
        try:
            client.negotiate()
            client.get_device_info()
            for index in range(client.device.num_regions):
                client.get_region_info(index)
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        for areas in self.mapped.values():
            for area in areas:
                area.mapping.close()
        self.mapped.clear()
        for region in self.regions.values():
            if region.fd is not None:
                os.close(region.fd)
                region.fd = None
        for fd in self.eventfds.values():
            os.close(fd)
        self.eventfds.clear()
        for window in self._dma:
            if window.mapping is not None:
                window.mapping.close()
            if window.fd is not None:
                os.close(window.fd)
        self._dma.clear()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ messages
    def send(self, cmd: int, payload: bytes = b"", fds=(), flags: int = 0, msg_id: int | None = None) -> int:
        if msg_id is None:
            msg_id = self._next_id
            self._next_id = (self._next_id + 1) & 0xFFFF
        message = wire.message(msg_id, cmd, payload, flags)
        try:
            if fds:
                send_with_fds(self.sock, message, fds)
            else:                                   # send_with_fds without its memoryview
                sent = self.sock.send(message)
                if sent < len(message):
                    self.sock.sendall(memoryview(message)[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise VfioUserProtocolError(f"server closed the connection: {exc}") from exc
        return msg_id

    def receive(self) -> Reply:
        """The next message from the server (one recvmsg() of up to _FIRST_READ bytes brings a
        reply that fits; MessageReader keeps fds with their message)."""
        try:
            return _new_tuple(Reply, self._reader.read())     # Reply(*...) without its Python-level __new__
        except BlockingIOError as exc:
            raise TimeoutError(errno.ETIMEDOUT, "no reply from the server in time") from exc
        except Unframeable as exc:
            raise VfioUserProtocolError(f"bad message size {exc.size} from server") from None
        except ConnectionResetError:
            raise VfioUserProtocolError("server closed the connection") from None
        except OSError as exc:
            raise VfioUserProtocolError(f"receive failed: {exc}") from exc

    def wait_reply(self, msg_id: int, cmd: int) -> Reply:
        """Wait for the reply to (msg_id, cmd), serving server->client DMA meanwhile."""
        while True:
            msg = self.receive()
            if msg.flags & wire.MSG_TYPE_MASK == wire.MSG_TYPE_COMMAND:
                self._serve_server_command(msg)
                continue
            if msg.msg_id != msg_id or msg.cmd != cmd:
                for fd in msg.fds:
                    os.close(fd)
                raise VfioUserProtocolError(f"reply id={msg.msg_id} cmd={msg.cmd}, expected "
                                            f"id={msg_id} cmd={cmd}")
            return msg

    def request(self, cmd: int, payload: bytes = b"", fds=()) -> Reply:
        """Send a command and return its reply; an error reply raises VfioUserError."""
        reply = self.wait_reply(self.send(cmd, payload, fds), cmd)
        if reply.flags & wire.FLAG_ERROR:
            err = reply.error_no or errno.EIO
            raise VfioUserError(err, f"{Command(cmd).name}: {os.strerror(err)}")
        return reply

    # ----------------------------------------------------------- negotiation
    def negotiate(self, capabilities: dict | None = None, major: int = 0, minor: int = 0) -> dict:
        caps = CLIENT_CAPABILITIES if capabilities is None else capabilities
        payload = wire.Version.build({"major": major, "minor": minor,
                                      "capabilities": {"capabilities": caps}})
        reply = self.request(Command.VERSION, payload)
        version = wire.Version.parse(reply.payload)
        if version.major != major or version.minor > minor:
            raise VfioUserProtocolError(f"server replied version {version.major}.{version.minor} "
                                        f"to a proposal of {major}.{minor}")
        server_caps = (version.capabilities or {}).get("capabilities", {})
        # Like QEMU, take what the server says even beyond what we proposed
        # (libvfio-user always reports max_msg_fds and max_data_xfer_size).
        self.server_version = (version.major, version.minor)
        self.server_capabilities = server_caps
        self.server_max_msg_fds = server_caps.get("max_msg_fds", 1)
        self.max_data_xfer_size = min(server_caps.get("max_data_xfer_size", 1 << 20),
                                      caps.get("max_data_xfer_size", 1 << 20))
        return server_caps

    # ------------------------------------------------------------- device
    def get_device_info(self) -> DeviceInfo:
        reply = self.request(Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
            {"argsz": 16, "flags": 0, "num_regions": 0, "num_irqs": 0}))
        info = wire.DeviceInfo.parse(reply.payload)
        self.device = DeviceInfo(info.flags, info.num_regions, info.num_irqs)
        return self.device

    def get_region_info(self, index: int) -> Region:
        """GET_REGION_INFO with the argsz retry; keeps the region's fd (if any)."""
        argsz = wire.REGION_INFO_SIZE
        for attempt in (1, 2):
            reply = self.request(Command.DEVICE_GET_REGION_INFO, wire.RegionInfo.build(
                {"argsz": argsz, "flags": 0, "index": index, "cap_offset": 0, "size": 0, "offset": 0}))
            info = wire.RegionInfo.parse(reply.payload[:wire.REGION_INFO_SIZE])
            if info.argsz <= argsz or attempt == 2:
                break
            for fd in reply.fds:
                os.close(fd)
            argsz = info.argsz
        caps = wire.parse_region_info_caps(reply.payload)
        if len(reply.fds) > 1:
            for fd in reply.fds:
                os.close(fd)
            raise VfioUserProtocolError(f"region {index}: {len(reply.fds)} fds, expected one")
        sparse = caps.get(wire.REGION_INFO_CAP_SPARSE_MMAP)
        areas = tuple((a.offset, a.size) for a in sparse.areas) if sparse else ()
        old = self.regions.get(index)
        if old is not None and old.fd is not None:
            os.close(old.fd)
        region = Region(index, info.size, info.flags, info.offset, reply.fds[0] if reply.fds else None,
                        areas, attempt)
        self.regions[index] = region
        return region

    def get_irq_info(self, index: int) -> IrqInfo:
        reply = self.request(Command.DEVICE_GET_IRQ_INFO, wire.IrqInfo.build(
            {"argsz": 16, "flags": 0, "index": index, "count": 0}))
        info = wire.IrqInfo.parse(reply.payload)
        return IrqInfo(info.index, info.flags, info.count)

    def reset(self) -> None:
        self.request(Command.DEVICE_RESET)

    # -------------------------------------------------------- region access
    def region_read(self, index: int, offset: int, count: int) -> bytes:
        out = bytearray()
        while count:
            n = min(count, self.max_data_xfer_size)
            reply = self.request(Command.REGION_READ, wire.REGION_ACCESS.pack(offset, index, n))
            got_offset, got_region, got_count = wire.REGION_ACCESS.unpack_from(reply.payload)
            data = reply.payload[wire.REGION_ACCESS.size:]
            if (got_offset, got_region, got_count) != (offset, index, n) or len(data) != n:
                raise VfioUserProtocolError(f"REGION_READ reply {got_offset:#x}/{got_region}/{got_count} "
                                            f"with {len(data)} bytes for {offset:#x}/{index}/{n}")
            out += data
            offset += n
            count -= n
        return bytes(out)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            n = min(len(view), self.max_data_xfer_size)
            self.request(Command.REGION_WRITE, wire.REGION_ACCESS.pack(offset, index, n) + view[:n].tobytes())
            offset += n
            view = view[n:]

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, size), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset, value.to_bytes(size, "little"))

    def map_region(self, index: int) -> list[MappedArea]:
        """mmap every sparse area of a region through the fd the server passed."""
        region = self.regions.get(index) or self.get_region_info(index)
        if not region.mmappable:
            raise VfioUserError(errno.EINVAL, f"region {index} is not mmappable")
        if index in self.mapped:
            return self.mapped[index]
        prot = (mmap.PROT_READ if region.flags & 1 else 0) | (mmap.PROT_WRITE if region.flags & 2 else 0)
        areas = []
        for offset, size in region.sparse_areas:
            if offset + size > region.size:
                raise VfioUserProtocolError(f"region {index}: sparse area {offset:#x}+{size:#x} outside")
            mapping = mmap.mmap(region.fd, size, flags=mmap.MAP_SHARED, prot=prot or mmap.PROT_READ,
                                offset=region.fd_offset + offset)
            areas.append(MappedArea(index, offset, size, mapping))
        self.mapped[index] = areas
        return areas

    # ----------------------------------------------------------------- IRQs
    def set_irqs(self, index: int, start: int, count: int, flags: int, data: bytes = b"", fds=()) -> None:
        payload = wire.SetIrqs.build({"argsz": wire.SET_IRQS_FIXED + len(data), "flags": flags,
                                      "index": index, "start": start, "count": count, "data": data})
        self.request(Command.DEVICE_SET_IRQS, payload, fds)

    def wire_eventfds(self, index: int, count: int, start: int = 0) -> list[int]:
        """Create ``count`` eventfds and hand them over (DATA_EVENTFD|ACTION_TRIGGER),
        in chunks of the server's max_msg_fds as QEMU does."""
        fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(count)]
        chunk = max(1, self.server_max_msg_fds)
        try:
            for first in range(0, count, chunk):
                part = fds[first:first + chunk]
                self.set_irqs(index, start + first, len(part),
                              wire.IRQ_SET_DATA_EVENTFD | wire.IRQ_SET_ACTION_TRIGGER, fds=part)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for n, fd in enumerate(fds):
            old = self.eventfds.pop((index, start + n), None)
            if old is not None:
                os.close(old)
            self.eventfds[(index, start + n)] = fd
        return fds

    def irq_count(self, index: int, vector: int) -> int:
        """Read (and clear) how often vector fired since the last read: 0 if never."""
        try:
            return int.from_bytes(os.read(self.eventfds[(index, vector)], 8), "little")
        except BlockingIOError:
            return 0

    # ------------------------------------------------------------------ DMA
    def dma_map(self, address: int, size: int, fd: int | None = None, offset: int = 0,
                flags: int = wire.DMA_MAP_FLAG_READ | wire.DMA_MAP_FLAG_WRITE, send_fd: bool = True) -> None:
        """Map a window at IOVA ``address`` backed by ``fd`` (our memory).  With
        ``send_fd`` the server may mmap it; without, the server must use DMA_READ/WRITE
        messages, which this client answers from its own mapping (QEMU without share=on)."""
        payload = wire.DmaMap.build({"argsz": 32, "flags": flags, "offset": offset,
                                     "address": address, "size": size})
        self.request(Command.DMA_MAP, payload, (fd,) if fd is not None and send_fd else ())
        mapping = None
        own_fd = None
        if fd is not None:
            own_fd = os.dup(fd)
            mapping = mmap.mmap(own_fd, size, flags=mmap.MAP_SHARED, offset=offset)
        self._dma.append(_DmaWindow(address, size, own_fd, mapping))

    def dma_unmap(self, address: int, size: int) -> None:
        self.request(Command.DMA_UNMAP, wire.DmaUnmap.build(
            {"argsz": 24, "flags": 0, "address": address, "size": size}))
        for window in [w for w in self._dma if (w.address, w.size) == (address, size)]:
            self._drop_window(window)

    def dma_unmap_all(self) -> None:
        self.request(Command.DMA_UNMAP, wire.DmaUnmap.build(
            {"argsz": 24, "flags": wire.DMA_UNMAP_FLAG_ALL, "address": 0, "size": 0}))
        for window in list(self._dma):
            self._drop_window(window)

    def _drop_window(self, window: _DmaWindow) -> None:
        self._dma.remove(window)
        if window.mapping is not None:
            window.mapping.close()
        if window.fd is not None:
            os.close(window.fd)

    def _serve_server_command(self, msg: Reply) -> None:
        """Answer a DMA_READ/DMA_WRITE from the server out of our own windows."""
        for fd in msg.fds:
            os.close(fd)
        self.server_requests_handled += 1
        try:
            if msg.cmd not in (Command.DMA_READ, Command.DMA_WRITE) or len(msg.payload) < wire.DMA_ACCESS.size:
                raise VfioUserError(errno.EINVAL, "unexpected server command")
            address, count = wire.DMA_ACCESS.unpack_from(msg.payload)
            window = next((w for w in self._dma if w.address <= address
                           and address + count <= w.address + w.size), None)
            if window is None or window.mapping is None:
                raise VfioUserError(errno.EFAULT, f"no client memory at {address:#x}+{count:#x}")
            off = address - window.address
            if msg.cmd == Command.DMA_READ:
                reply = msg.payload[:wire.DMA_ACCESS.size] + window.mapping[off:off + count]
            else:
                data = msg.payload[wire.DMA_ACCESS.size:]
                if len(data) != count:
                    raise VfioUserError(errno.EINVAL, "DMA_WRITE length mismatch")
                window.mapping[off:off + count] = data
                reply = msg.payload[:wire.DMA_ACCESS.size]
            send_with_fds(self.sock, wire.message(msg.msg_id, msg.cmd, reply, wire.MSG_TYPE_REPLY))
        except VfioUserError as exc:
            send_with_fds(self.sock, wire.message(msg.msg_id, msg.cmd, b"",
                                                  wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, exc.errno))
