"""The libvfio-user backend, driven by raw vfio-user messages over a real socket.

Everything is real: the shared library, AF_UNIX sockets with SCM_RIGHTS, memfds
for the BAR and for "guest RAM", eventfds for interrupts.  The device is a small
ServedDevice defined here (a 64-bit BAR0 backed by a memfd with a trapped
register page, a 32-bit trapped BAR2, a PCIe config space with BAR sizing), so
these tests do not depend on the GPU model.  The shared conformance suite runs
the host client against this backend as well.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import select
import socket
import stat
import struct
import threading
import time

import pytest

from hugepfn.abi import vfio
from hugepfn.abi import vfio_user as wire
from hugepfn.abi.registers import REG_DOORBELL, REG_SCRATCH
from hugepfn.abi.vfio_user import Command
from hugepfn.device.interface import IrqInfo, RegionInfo, SparseArea
from hugepfn.device.vfio_user import backend_libvfio_user as lvu

AVAILABLE, REASON = lvu.is_available()
needs_library = pytest.mark.skipif(not AVAILABLE, reason=REASON)

HDR = wire.HEADER
F_REPLY, F_ERROR = wire.MSG_TYPE_REPLY, wire.FLAG_ERROR
VERSION, DMA_MAP, DMA_UNMAP = Command.VERSION, Command.DMA_MAP, Command.DMA_UNMAP
GET_INFO, REGION_INFO, IRQ_INFO = Command.DEVICE_GET_INFO, Command.DEVICE_GET_REGION_INFO, Command.DEVICE_GET_IRQ_INFO
SET_IRQS, REGION_READ, REGION_WRITE = Command.DEVICE_SET_IRQS, Command.REGION_READ, Command.REGION_WRITE
DEVICE_RESET = Command.DEVICE_RESET
MiB = 1 << 20
BAR0_SIZE = 2 * MiB
BAR2_SIZE = 4096
DOORBELL = 0x100         # BAR0 register: writing N raises MSI-X vector N (INTx when N == 0xff)
FAIL_EIO, FAIL_RUNTIME, FAIL_VALUE = 0x200, 0x208, 0x210


class SmallDevice:
    """A minimal ServedDevice with real memory behind it."""

    device_flags = vfio.VFIO_DEVICE_FLAGS_RESET | vfio.VFIO_DEVICE_FLAGS_PCI
    num_regions = vfio.VFIO_PCI_NUM_REGIONS
    num_irqs = vfio.VFIO_PCI_NUM_IRQS
    IRQ_COUNTS = {0: 1, 1: 0, 2: 4, 3: 1, 4: 1}

    def __init__(self, bar0_size=BAR0_SIZE, bar0_index=0, bar0_64bit=True):
        self.bar0_index = bar0_index
        self.bar0_size = bar0_size
        self.bar0_64bit = bar0_64bit
        self.memfd = os.memfd_create("small-bar0", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, bar0_size)
        self.registers = bytearray(4096)
        self.bar2 = bytearray(BAR2_SIZE)
        self.config = bytearray(4096)
        struct.pack_into("<HH", self.config, 0, 0x1234, 0x11e8)          # vendor, device
        struct.pack_into("<I", self.config, 0x08, 0x03020001)            # 3D controller, rev 1
        self.config[0x3D] = 1                                            # INTA#
        self._reset_bars()
        self.resets = 0
        self.sink = None
        self.irq_states: list[tuple[int, int, int, bool]] = []

    def _reset_bars(self):
        struct.pack_into("<I", self.config, 0x10 + 4 * self.bar0_index,
                         0xC if self.bar0_64bit else 0x8)                # 64-bit prefetchable memory
        struct.pack_into("<I", self.config, 0x18, 0x0)                   # BAR2: 32-bit memory
        struct.pack_into("<H", self.config, 0x04, 0)

    def region_info(self, index):
        if index == self.bar0_index:
            return RegionInfo(index, self.bar0_size, 0x7, fd=self.memfd,
                                   sparse_areas=(SparseArea(4096, self.bar0_size - 4096),),
                                   is_64bit=self.bar0_64bit, prefetchable=self.bar0_64bit)
        if index == 2:
            return RegionInfo(2, BAR2_SIZE, 0x3)
        if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
            return RegionInfo(index, 4096, 0x3)
        return RegionInfo(index, 0, 0)

    def irq_info(self, index):
        return IrqInfo(index, self.IRQ_COUNTS[index])

    def _check(self, index, offset, count):
        size = self.region_info(index).size
        if offset < 0 or count < 0 or offset + count > size:
            raise OSError(errno.EINVAL, f"region {index}: {offset:#x}+{count} outside {size:#x}")

    def region_read(self, index, offset, count):
        self._check(index, offset, count)
        if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
            return bytes(self.config[offset:offset + count])
        if index == 2:
            return bytes(self.bar2[offset:offset + count])
        if offset < 4096:
            if offset == FAIL_EIO:
                raise OSError(errno.EIO, "poisoned register")
            if offset == FAIL_RUNTIME:
                raise RuntimeError("a bug in the device model")
            if offset == FAIL_VALUE:
                raise ValueError("bad register access")
            return bytes(self.registers[offset:offset + count])
        return os.pread(self.memfd, count, offset)

    def region_write(self, index, offset, data):
        self._check(index, offset, len(data))
        if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
            self._config_write(offset, data)
        elif index == 2:
            self.bar2[offset:offset + len(data)] = data
        elif offset < 4096:
            self.registers[offset:offset + len(data)] = data
            if offset == DOORBELL and self.sink is not None:
                vector = data[0]
                self.sink(*((vfio.VFIO_PCI_INTX_IRQ_INDEX, 0) if vector == 0xFF
                            else (vfio.VFIO_PCI_MSIX_IRQ_INDEX, vector)))
        else:
            os.pwrite(self.memfd, data, offset)

    def _config_write(self, offset, data):
        for pos, byte in enumerate(data, offset):
            if pos in (0x04, 0x05) or 0x10 <= pos < 0x28:
                self.config[pos] = byte
        lo = 0x10 + 4 * self.bar0_index
        raw = struct.unpack_from("<I", self.config, lo)[0]
        struct.pack_into("<I", self.config, lo,
                         (raw & ~(self.bar0_size - 1) & 0xFFFFFFF0) | (0xC if self.bar0_64bit else 0x8))
        struct.pack_into("<I", self.config, 0x18,
                         struct.unpack_from("<I", self.config, 0x18)[0] & ~(BAR2_SIZE - 1) & 0xFFFFFFF0)
        for unused in range(0x10, 0x28, 4):
            if unused not in (lo, 0x18) and not (self.bar0_64bit and unused == lo + 4):
                struct.pack_into("<I", self.config, unused, 0)

    def reset(self):
        self.resets += 1
        self.registers[:] = bytes(4096)
        self._reset_bars()

    def set_interrupt_sink(self, sink):
        self.sink = sink

    def irq_state_changed(self, index, start, count, masked):
        self.irq_states.append((index, start, count, masked))


class RawClient:
    """Just enough of a vfio-user client: struct-packed messages over AF_UNIX."""

    def __init__(self, path, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.msg_id = 0
        self.error_payloads: list[bytes] = []
        if negotiate:
            self.version_reply = self.version()

    def close(self):
        self.sock.close()

    def _recv_exact(self, n, fds):
        data = b""
        while len(data) < n:
            chunk, got_fds, _flags, _addr = socket.recv_fds(self.sock, n - len(data), 8)
            if not chunk:
                raise ConnectionError("server closed the connection")
            fds += got_fds
            data += chunk
        return data

    def call(self, cmd, payload=b"", fds=()):
        """Send one command; return (error_no or 0, reply payload, received fds)."""
        self.msg_id = (self.msg_id + 1) & 0xFFFF
        msg = HDR.pack(self.msg_id, cmd, HDR.size + len(payload), 0, 0) + payload
        if fds:
            socket.send_fds(self.sock, [msg], list(fds))
        else:
            self.sock.sendall(msg)
        fds_in: list[int] = []
        msg_id, rcmd, size, flags, error_no = HDR.unpack(self._recv_exact(HDR.size, fds_in))
        body = self._recv_exact(size - HDR.size, fds_in) if size > HDR.size else b""
        assert (msg_id, rcmd, flags & 0xF) == (self.msg_id, cmd, F_REPLY)
        if flags & F_ERROR:
            # libvfio-user sends a header-only error when it rejects a request
            # itself, but keeps the payload it had built when a callback failed.
            self.error_payloads.append(body)
            return error_no, body, fds_in
        return 0, body, fds_in

    def ok(self, cmd, payload=b"", fds=()):
        err, body, fds_in = self.call(cmd, payload, fds)
        assert err == 0, f"command {cmd} failed: {os.strerror(err)}"
        return body, fds_in

    def version(self, minor=0):
        caps = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": MiB}}
        body, _ = self.ok(VERSION, struct.pack("<HH", 0, minor) + json.dumps(caps).encode() + b"\0")
        return body

    def region_read(self, index, offset, count):
        err, body, _ = self.call(REGION_READ, struct.pack("<QII", offset, index, count))
        if err:
            return err
        assert struct.unpack_from("<QII", body) == (offset, index, count)
        return body[16:]

    def region_write(self, index, offset, data):
        return self.call(REGION_WRITE, struct.pack("<QII", offset, index, len(data)) + data)[0]

    def region_info(self, index, argsz=32):
        body, fds = self.ok(REGION_INFO, struct.pack("<IIIIQQ", argsz, 0, index, 0, 0, 0))
        return body, fds

    def set_irqs(self, index, start, fds, flags=0x24, count=None):
        count = len(fds) if count is None else count
        return self.call(SET_IRQS, struct.pack("<IIIII", 20, flags, index, start, count), fds)[0]

    def dma_map(self, iova, size, fd=None, offset=0):
        payload = struct.pack("<IIQQQ", 32, 3, offset, iova, size)
        return self.call(DMA_MAP, payload, () if fd is None else (fd,))[0]

    def dma_unmap(self, iova, size, flags=0):
        return self.call(DMA_UNMAP, struct.pack("<IIQQ", 24, flags, iova, size))


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def eventfd_fired(fd, timeout=2.0) -> int:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.eventfd_read(fd) if ready else 0


@pytest.fixture
def eventfds():
    """eventfds(n) -> n non-blocking eventfds, closed after the test."""
    made = []

    def make(n):
        fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(n)]
        made.extend(fds)
        return fds
    yield make
    for fd in made:
        os.close(fd)


@pytest.fixture
def device():
    dev = SmallDevice()
    yield dev
    os.close(dev.memfd)


@pytest.fixture
def server(device, tmp_path):
    srv = lvu.Server(device, tmp_path / "gpu.sock").start()
    yield srv
    srv.close()


@pytest.fixture
def client(server):
    c = RawClient(server.socket_path)
    yield c
    c.close()


# --------------------------------------------------------------------------------------

def test_is_available_reports_reason_for_a_missing_library(monkeypatch, tmp_path):
    monkeypatch.setenv(lvu.ENV_LIBRARY, str(tmp_path / "libvfio-user.so.0"))
    lib, reason = lvu._find_and_vet()
    assert lib is None
    assert reason == (f"libvfio-user.so not found at {lvu.ENV_LIBRARY}={tmp_path}/libvfio-user.so.0; "
                      "build libvfio-user >= 850ded8 (see docs/libvfio-user.md)")


def test_is_available_rejects_a_file_that_is_not_a_library(monkeypatch, tmp_path):
    fake = tmp_path / "libvfio-user.so.0"
    fake.write_bytes(b"not an ELF file")
    monkeypatch.setenv(lvu.ENV_LIBRARY, str(fake))
    lib, reason = lvu._find_and_vet()
    assert lib is None
    assert "cannot load" in reason and reason.endswith("(see docs/libvfio-user.md)")
    assert "\n" not in reason


@needs_library
def test_is_available_names_where_the_library_was_found():
    ok, reason = lvu.is_available()
    assert ok and reason.startswith("libvfio-user from ")


@needs_library
def test_version_negotiation_replies_within_what_qemu_proposed(client):
    major, minor = struct.unpack_from("<HH", client.version_reply)
    assert (major, minor) == (0, 0)
    text = client.version_reply[4:]
    assert text.endswith(b"\0")
    caps = json.loads(text[:-1])["capabilities"]
    assert set(caps) <= {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes",
                         "migration", "twin_socket", "write_multiple"}
    assert caps["max_msg_fds"] <= 16 and caps["max_data_xfer_size"] <= 64 * MiB


@needs_library
def test_device_info_regions_and_irqs(client):
    body, _ = client.ok(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
    assert struct.unpack("<IIII", body) == (16, 0x3, 9, 5)
    for index, count in SmallDevice.IRQ_COUNTS.items():
        body, _ = client.ok(IRQ_INFO, struct.pack("<IIII", 16, 0, index, 0))
        assert struct.unpack("<IIII", body) == (16, vfio.VFIO_IRQ_INFO_EVENTFD, index, count)


@needs_library
def test_bar0_region_info_two_step_argsz_sparse_cap_and_one_fd(client, device):
    body, fds = client.region_info(0, argsz=32)
    argsz, flags, index, cap_offset, size, offset = struct.unpack("<IIIIQQ", body[:32])
    assert (argsz, flags, index, size, fds) == (64, 0x7, 0, BAR0_SIZE, [])
    body, fds = client.region_info(0, argsz=argsz)
    argsz, flags, index, cap_offset, size, offset = struct.unpack("<IIIIQQ", body[:32])
    assert (argsz, flags, index, size) == (64, 0xF, 0, BAR0_SIZE)
    assert len(fds) == 1
    cap_id, cap_version, cap_next, nr_areas = struct.unpack_from("<HHII", body, cap_offset)
    assert (cap_id, cap_version, cap_next, nr_areas) == (1, 1, 0, 1)
    assert struct.unpack_from("<QQ", body, cap_offset + 16) == (4096, BAR0_SIZE - 4096)
    # The fd maps the device's memory: what the client writes there, REGION_READ returns.
    with mmap.mmap(fds[0], BAR0_SIZE - 4096, offset=offset + 4096) as window:
        window[0x1000:0x1008] = b"mmapdata"
        assert client.region_read(0, 4096 + 0x1000, 8) == b"mmapdata"
        assert client.region_write(0, 4096 + 0x2000, b"viamsg!!") == 0
        assert window[0x2000:0x2008] == b"viamsg!!"
    os.close(fds[0])


@needs_library
def test_unused_and_upper_half_bars_report_size_zero(client):
    for index in (1, 3, 4, 5):
        body, fds = client.region_info(index)
        assert struct.unpack_from("<IIIIQQ", body)[1:5:3] == (0, 0) and fds == []
    body, _ = client.region_info(2)
    assert struct.unpack_from("<IIIIQQ", body)[1] == 0x3            # trapped: no MMAP


@needs_library
def test_config_space_is_the_devices_own_bytes(client, device):
    assert client.region_read(7, 0, 4096) == bytes(device.config)
    assert client.region_read(7, 0, 4) == struct.pack("<HH", 0x1234, 0x11e8)


@needs_library
def test_bar_sizing_goes_through_the_device(client, device):
    assert client.region_write(7, 0x10, b"\xff\xff\xff\xff") == 0
    assert client.region_write(7, 0x14, b"\xff\xff\xff\xff") == 0
    lo, hi = struct.unpack("<II", client.region_read(7, 0x10, 8))
    assert (lo, hi) == ((~(BAR0_SIZE - 1) & 0xFFFFFFF0) | 0xC, 0xFFFFFFFF)
    assert client.region_write(7, 0x10, struct.pack("<II", 0x0, 0x1)) == 0       # 4 GiB
    assert struct.unpack("<II", client.region_read(7, 0x10, 8)) == (0xC, 0x1)
    assert struct.unpack_from("<II", device.config, 0x10) == (0xC, 0x1)


@needs_library
def test_trapped_registers_round_trip(client, device):
    assert client.region_write(0, 0x40, struct.pack("<Q", 0x1122334455667788)) == 0
    assert device.registers[0x40:0x48] == struct.pack("<Q", 0x1122334455667788)
    assert client.region_read(0, 0x40, 8) == struct.pack("<Q", 0x1122334455667788)
    assert client.region_write(2, 0xFF8, b"ABCDEFGH") == 0
    assert client.region_read(2, 0xFF8, 8) == b"ABCDEFGH" == bytes(device.bar2[0xFF8:])


@needs_library
def test_errors_are_header_only_with_errno(client):
    assert client.region_read(2, BAR2_SIZE - 4, 8) == errno.EINVAL      # past the end
    assert client.region_read(12, 0, 4) == errno.EINVAL                 # no such region
    assert client.region_read(0, FAIL_EIO, 8) == errno.EIO              # device's OSError errno
    assert client.region_read(0, FAIL_RUNTIME, 8) == errno.EIO          # a device bug: EIO
    assert client.region_read(0, FAIL_VALUE, 8) == errno.EINVAL
    assert client.call(99, b"\0" * 8)[0] == errno.EINVAL                # unknown command
    assert client.region_read(0, 0x40, 4) == bytes(4)                   # still serving
    # Rejections by the library are header-only; failed callbacks echo the access.
    assert [len(p) for p in client.error_payloads] == [0, 0, 24, 24, 24, 0]


@needs_library
def test_callback_exceptions_are_counted_not_raised(client, server):
    before = server.stats["callback_errors"]
    for _ in range(3):
        assert client.region_read(0, FAIL_RUNTIME, 8) == errno.EIO
    assert server.stats["callback_errors"] == before + 3


@needs_library
def test_device_interrupts_reach_the_clients_eventfds(client, device, eventfds):
    intx, *msix = eventfds(5)
    assert client.set_irqs(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0, [intx]) == 0
    assert client.region_write(0, DOORBELL, b"\xff") == 0             # raised inside a callback
    assert eventfd_fired(intx) == 1
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 0, msix) == 0
    raiser = threading.Thread(target=device.sink, args=(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 3))
    raiser.start()                                                    # raised from another thread
    raiser.join()
    assert eventfd_fired(msix[3]) == 1
    assert [eventfd_fired(fd, 0.05) for fd in msix[:3]] == [0, 0, 0]


@needs_library
def test_interrupt_without_eventfd_is_pending_until_unmask(client, device, server, eventfds):
    device.sink(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 1)
    assert wait_for(lambda: server.stats["irqs_pending"] == 1)
    efds = eventfds(4)
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 0, efds) == 0
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 1, [], flags=0x1 | 0x10, count=1) == 0
    assert (vfio.VFIO_PCI_MSIX_IRQ_INDEX, 1, 1, False) in device.irq_states
    assert eventfd_fired(efds[1]) == 1


@needs_library
def test_mask_reaches_the_device(client, device):
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 2, [], flags=0x1 | 0x8, count=1) == 0
    assert device.irq_states == [(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 2, 1, True)]
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 3, [], flags=0x1 | 0x8 | 0x10, count=1) == errno.EINVAL


@needs_library
def test_dma_map_with_fd_is_mapped_and_readable(client, server):
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(ram, 4 * MiB)
    try:
        os.pwrite(ram, b"guest data", 0x3000)
        assert client.dma_map(0x100000000, 4 * MiB, fd=ram) == 0
        assert server.dma_regions() == [lvu.DmaRegion(0x100000000, 4 * MiB, 3, True)]
        assert server.dma_read(0x100003000, 10) == b"guest data"
        server.dma_write(0x100004000, b"from device")
        assert os.pread(ram, 11, 0x4000) == b"from device"
        # libvfio-user answers an overlap with EINVAL (not EEXIST) and takes an
        # identical re-map as a no-op.
        assert client.dma_map(0x100000000, 4096, fd=ram) == errno.EINVAL
        assert client.dma_map(0x100000000, 4 * MiB, fd=ram) == 0
        assert len(server.dma_regions()) == 1
        assert client.dma_unmap(0x100000000, 4 * MiB)[0] == 0
        assert server.dma_regions() == []
        with pytest.raises(OSError) as exc:
            server.dma_read(0x100003000, 10)
        assert exc.value.errno == errno.EFAULT
    finally:
        os.close(ram)


@needs_library
def test_dma_map_without_fd_is_accepted(client, server):
    # QEMU maps the device's own BAR (and ROM, VGA) this way.
    assert client.dma_map(0xFFE00001000, BAR0_SIZE - 4096) == 0
    assert server.dma_regions() == [lvu.DmaRegion(0xFFE00001000, BAR0_SIZE - 4096, 3, False)]
    with pytest.raises(OSError) as exc:
        server.dma_read(0xFFE00001000, 8)
    assert exc.value.errno == errno.EFAULT


@needs_library
def test_device_reset_calls_the_device(client, device):
    assert client.region_write(0, 0x40, b"dirty!!!") == 0
    client.ok(DEVICE_RESET)
    assert device.resets == 1
    assert client.region_read(0, 0x40, 8) == bytes(8)


@needs_library
def test_disconnect_drops_dma_and_irqs_keeps_device_state_and_accepts_next(server, device):
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(ram, MiB)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        first = RawClient(server.socket_path)
        assert first.dma_map(0x40000000, MiB, fd=ram) == 0
        assert first.set_irqs(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0, [efd]) == 0
        assert first.region_write(2, 0x10, b"persist!") == 0
        first.close()
        assert wait_for(lambda: server.stats["disconnects"] == 1 and not server.dma_regions())
        assert device.resets == 0                       # losing a client is not a device reset
        second = RawClient(server.socket_path)
        assert second.region_read(2, 0x10, 8) == b"persist!"
        device.sink(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0)    # the old client's eventfd is gone
        assert eventfd_fired(efd, 0.2) == 0
        assert wait_for(lambda: server.stats["irqs_pending"] == 1)
        second.close()
        assert server.stats["connections"] == 2
    finally:
        os.close(ram)
        os.close(efd)


@needs_library
def test_second_concurrent_client_is_refused(client, server):
    intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    intruder.settimeout(5)
    intruder.connect(server.socket_path)
    assert intruder.recv(16) == b""                     # EOF at once, no hang
    intruder.close()
    assert server.stats["refused_clients"] == 1
    assert client.region_read(2, 0, 4) == bytes(4)      # the first client is unaffected


@needs_library
def test_socket_is_private_and_removed_on_close(device, tmp_path):
    path = tmp_path / "private.sock"
    srv = lvu.Server(device, path)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        srv.close()
    assert not path.exists()


@needs_library
def test_stale_socket_is_replaced_but_other_files_are_not(device, tmp_path):
    stale = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()                                    # a dead server's socket file
    with lvu.Server(device, stale).start() as srv:
        c = RawClient(srv.socket_path)
        c.close()
        with pytest.raises(FileExistsError):
            lvu.Server(device, stale)                    # someone is listening now
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        lvu.Server(device, regular)
    assert regular.read_text() == "keep me"


@needs_library
def test_silent_client_cannot_block_the_server(device, tmp_path, monkeypatch):
    monkeypatch.setattr(lvu, "ATTACH_TIMEOUT_S", 0.3)
    with lvu.Server(device, tmp_path / "s.sock").start() as srv:
        mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mute.connect(srv.socket_path)                   # never sends VERSION
        assert wait_for(lambda: srv.stats["failed_attaches"] == 1)
        mute.close()
        c = RawClient(srv.socket_path)
        assert c.region_read(2, 0, 4) == bytes(4)
        c.close()


@needs_library
def test_truncated_message_disconnects_without_hanging(device, tmp_path, monkeypatch):
    monkeypatch.setattr(lvu, "IO_TIMEOUT_S", 0.3)
    with lvu.Server(device, tmp_path / "t.sock").start() as srv:
        c = RawClient(srv.socket_path)
        c.sock.sendall(HDR.pack(1, REGION_WRITE, HDR.size + 24, 0, 0) + b"\0" * 8)  # 16 bytes short
        started = time.monotonic()
        c.sock.settimeout(3)
        try:
            answer = c.sock.recv(64)          # an error reply or EOF
        except ConnectionResetError:
            answer = b""                      # closed with our unread bytes pending
        assert time.monotonic() - started < 3
        if answer:
            assert HDR.unpack_from(answer)[3] & F_ERROR
        c.close()
        assert wait_for(lambda: srv.stats["disconnects"] == 1)
        again = RawClient(srv.socket_path)
        assert again.region_read(2, 0, 4) == bytes(4)
        again.close()


@needs_library
def test_serve_forever_returns_after_close(device, tmp_path):
    srv = lvu.Server(device, tmp_path / "f.sock")
    runner = threading.Thread(target=srv.serve_forever)
    runner.start()
    c = RawClient(srv.socket_path)
    assert c.region_read(7, 0, 2) == struct.pack("<H", 0x1234)
    srv.close()
    runner.join(5)
    assert not runner.is_alive()
    c.close()
    srv.close()                                         # idempotent


@needs_library
@pytest.mark.parametrize("shape, message", [
    (dict(bar0_size=3 * MiB), "BAR0 size 0x300000 is not a power of two"),
    (dict(bar0_index=1), "64-bit BAR1 must sit at an even index"),
])
def test_devices_libvfio_user_cannot_represent_are_refused(shape, message, tmp_path):
    dev = SmallDevice(**shape)
    try:
        with pytest.raises(lvu.UnsupportedDevice, match=message):
            lvu.Server(dev, tmp_path / "bad.sock")
        assert not (tmp_path / "bad.sock").exists()
    finally:
        os.close(dev.memfd)


@needs_library
def test_large_64bit_bar_is_reported_with_its_full_size(tmp_path):
    dev = SmallDevice(bar0_size=8 << 30)        # a sparse memfd: nothing is allocated
    try:
        with lvu.Server(dev, tmp_path / "big.sock").start() as srv:
            c = RawClient(srv.socket_path)
            body, fds = c.region_info(0, argsz=64)
            assert struct.unpack_from("<IIIIQQ", body)[4] == 8 << 30 and len(fds) == 1
            os.close(fds[0])
            assert c.region_write(0, (8 << 30) - 8, b"lastword") == 0
            assert c.region_read(0, (8 << 30) - 8, 8) == b"lastword"
            c.close()
    finally:
        os.close(dev.memfd)


# -- the real GPU model behind libvfio-user -----------------------------------------------

MSIX_CAP = 0xA0                                 # device/config_layout.py


@pytest.fixture
def gpu():
    from hugepfn.device.gpu import GpuDevice
    dev = GpuDevice.from_profile("tiny")
    yield dev
    dev.close()


@pytest.fixture
def gpu_client(gpu, tmp_path):
    with lvu.Server(gpu, tmp_path / "gpu.sock").start() as srv:
        c = RawClient(srv.socket_path)
        yield c
        c.close()


@needs_library
def test_gpu_config_space_matches_the_model_byte_for_byte(gpu_client, gpu):
    assert gpu_client.region_read(7, 0, 4096) == gpu.region_read(7, 0, 4096)
    assert gpu_client.region_read(7, 0, 4) == struct.pack("<HH", 0x10DE, 0x2330)


@needs_library
def test_gpu_bar_layout_and_memory_through_mmap(gpu_client, gpu):
    sizes = {}
    for index in range(6):
        body, fds = gpu_client.region_info(index, argsz=64)
        _argsz, flags, _i, cap_offset, size, offset = struct.unpack_from("<IIIIQQ", body)
        sizes[index] = (size, flags, len(fds))
        for fd in fds[1:]:
            os.close(fd)
        if fds:
            memory_fd = fds[0]
    assert sizes == {0: (64 << 10, 0x3, 0), 1: (0, 0, 0), 2: (64 * MiB, 0xF, 1),
                     3: (0, 0, 0), 4: (16 << 10, 0x3, 0), 5: (0, 0, 0)}
    with mmap.mmap(memory_fd, 64 * MiB) as bar2:
        bar2[0x123000:0x123008] = b"hugepfn!"
        assert gpu_client.region_read(2, 0x123000, 8) == b"hugepfn!"
        assert gpu.region_read(2, 0x123000, 8) == b"hugepfn!"
    os.close(memory_fd)


@needs_library
def test_gpu_doorbell_raises_intx_then_msix(gpu_client, gpu, eventfds):
    intx, *msix = eventfds(9)
    assert gpu_client.set_irqs(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0, [intx]) == 0
    assert gpu_client.region_write(0, REG_DOORBELL, struct.pack("<I", 5)) == 0
    assert eventfd_fired(intx) == 1                                   # MSI-X off: INTx
    assert gpu_client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 0, msix) == 0
    assert gpu_client.region_write(4, 5 * 16 + 12, struct.pack("<I", 0)) == 0   # unmask entry 5
    control = struct.unpack("<H", gpu_client.region_read(7, MSIX_CAP + 2, 2))[0]
    assert gpu_client.region_write(7, MSIX_CAP + 2, struct.pack("<H", control | 0x8000)) == 0
    assert gpu_client.region_write(0, REG_DOORBELL, struct.pack("<I", 5)) == 0
    assert eventfd_fired(msix[5]) == 1


@needs_library
def test_gpu_reset_and_poisoned_read(gpu_client, gpu):
    assert gpu_client.region_write(0, REG_SCRATCH, struct.pack("<I", 0xCAFE)) == 0
    assert gpu_client.region_write(7, 0x04, struct.pack("<H", 0x6)) == 0           # MEM | BUS_MASTER
    gpu_client.ok(DEVICE_RESET)
    assert gpu_client.region_read(0, REG_SCRATCH, 4) == bytes(4)
    assert struct.unpack("<H", gpu_client.region_read(7, 0x04, 2))[0] & 0x6 == 0
    gpu.inject_poison(bar=2, offset=0x40000)
    assert gpu_client.region_read(2, 0x40000, 8) == errno.EIO
    assert gpu_client.region_read(2, 0x40040, 8) == bytes(8)                     # next cacheline


@needs_library
def test_close_right_after_start_is_safe(device, tmp_path):
    for attempt in range(20):
        srv = lvu.Server(device, tmp_path / f"r{attempt}.sock").start()
        srv.close()
        assert not (tmp_path / f"r{attempt}.sock").exists()


SERVE_SCRIPT = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from test_libvfio_user_backend import SmallDevice
from hugepfn.device.vfio_user.backend_libvfio_user import Server
srv = Server(SmallDevice(), sys.argv[1])
print("ready", flush=True)
srv.serve_forever()
print("stopped", flush=True)
"""


@needs_library
def test_serve_forever_in_the_main_thread_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    path = tmp_path / "main.sock"
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(path), os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        c = RawClient(str(path))
        assert c.region_read(7, 0, 2) == struct.pack("<H", 0x1234)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        c.close()
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (0, "stopped\n", "")
    assert not path.exists()


@needs_library
def test_close_from_inside_a_callback_waits_for_the_library_to_return(device, tmp_path):
    path = tmp_path / "cb.sock"
    servers = []
    plain_write = device.region_write

    def write_then_close(index, offset, data):
        plain_write(index, offset, data)
        if index == 2 and offset == 0:
            servers[0].close()                          # runs in the owner thread, inside C
    device.region_write = write_then_close
    servers.append(lvu.Server(device, path).start())
    c = RawClient(str(path))
    assert c.region_write(2, 0, b"bye!") == 0           # the reply still goes out
    assert wait_for(lambda: not path.exists())
    with pytest.raises(ConnectionError):
        c.region_read(2, 0, 4)
    c.close()
    assert device.sink is None


@needs_library
def test_large_region_write_keeps_the_stream_in_sync(client, server, device):
    # The library alone short-reads bodies above one socket write (~200 KiB).
    data = bytes(range(256)) * 4096                    # 1 MiB, the advertised maximum
    assert client.region_write(0, 4096, data) == 0
    assert os.pread(device.memfd, len(data), 4096) == data
    assert client.region_read(0, 4096, len(data)) == data
    assert client.region_write(0, BAR0_SIZE - 4096, bytes(300_000)) == errno.EINVAL  # past the end
    assert client.region_write(12, 0, bytes(300_000)) == errno.EINVAL                # no region
    assert client.region_read(0, 0x40, 4) == bytes(4)                                # still in sync
    assert server.stats["large_writes"] == 3


@needs_library
def test_large_region_write_with_no_reply_flag_and_oversized_write(client, server, device):
    body = struct.pack("<QII", 8192, 0, 200_000) + b"\x5a" * 200_000
    client.sock.sendall(HDR.pack(77, REGION_WRITE, HDR.size + len(body), 0x10, 0) + body)
    assert client.region_read(0, 8192, 4) == b"\x5a" * 4          # the next reply is this one
    oversized = struct.pack("<QII", 4096, 0, (1 << 20) + 4096)
    client.sock.sendall(HDR.pack(78, REGION_WRITE, HDR.size + len(oversized) + (1 << 20) + 4096, 0, 0)
                        + oversized + bytes(64 << 10))
    with pytest.raises((ConnectionError, OSError)):
        client.region_read(0, 0, 4)                               # disconnected, as the library does
    assert wait_for(lambda: server.stats["disconnects"] == 1)


@needs_library
def test_quick_reconnects_are_served_not_refused(server):
    for n in range(50):
        c = RawClient(server.socket_path)
        assert c.region_write(2, 0, struct.pack("<I", n)) == 0
        c.close()                                       # the next one connects at once
    last = RawClient(server.socket_path)
    assert last.region_read(2, 0, 4) == struct.pack("<I", 49)
    last.close()
    assert server.stats["refused_clients"] == 0 and server.stats["connections"] == 51


@needs_library
def test_masked_vector_is_held_pending_until_unmask(client, device, eventfds):
    efds = eventfds(4)
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 0, efds) == 0
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 2, [], flags=0x1 | 0x8, count=1) == 0
    assert client.region_write(0, DOORBELL, b"\x02") == 0
    assert client.region_write(0, DOORBELL, b"\x03") == 0
    assert eventfd_fired(efds[3]) == 1                  # not masked: delivered
    assert eventfd_fired(efds[2], 0.1) == 0             # masked: held
    assert client.set_irqs(vfio.VFIO_PCI_MSIX_IRQ_INDEX, 2, [], flags=0x1 | 0x10, count=1) == 0
    assert eventfd_fired(efds[2]) == 1                  # delivered by the unmask


@needs_library
def test_refused_construction_leaks_no_fd(device, tmp_path):
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(FileExistsError):
            lvu.Server(device, regular)
    assert len(os.listdir("/proc/self/fd")) == before


@needs_library
def test_dma_access_past_a_short_file_or_into_a_read_only_window_is_efault(client, server):
    short = os.memfd_create("short-ram", os.MFD_CLOEXEC)
    os.ftruncate(short, 4096)                           # the window claims 1 MiB
    try:
        os.pwrite(short, b"first page", 0)
        assert client.dma_map(0x200000, MiB, fd=short) == 0
        assert server.dma_read(0x200000, 10) == b"first page"
        with pytest.raises(OSError) as exc:
            server.dma_read(0x200000 + 8192, 8)          # SIGBUS if touched directly
        assert exc.value.errno == errno.EFAULT
        read_only = struct.pack("<IIQQQ", 32, 1, 0, 0x400000, 4096)
        assert client.call(DMA_MAP, read_only, (short,))[0] == 0
        with pytest.raises(OSError) as exc:
            server.dma_write(0x400000, b"nope")          # SIGSEGV if touched directly
        assert exc.value.errno == errno.EFAULT
        assert os.pread(short, 4, 0) == b"firs"
        assert client.region_read(2, 0, 4) == bytes(4)  # still serving
    finally:
        os.close(short)
