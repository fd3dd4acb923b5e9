"""The sans-IO engine without sockets: framing, state table, the one errno path, fds."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import Command
from hugepfn.device.vfio_user.engine import ServerEngine, State
from hugepfn.device.vfio_user.events import (
    CommandFailed, Disconnected, DmaMapped, Negotiated, PeerReply,
)

from .small_device import DOORBELL, FAIL_REG, SmallDevice


def version_msg(msg_id=0, major=0, minor=0, caps=None):
    return wire.message(msg_id, Command.VERSION, wire.Version.build(
        {"major": major, "minor": minor, "capabilities": {"capabilities": caps or {}}}))


def read_msg(msg_id, region, offset, count, flags=0):
    return wire.message(msg_id, Command.REGION_READ, wire.REGION_ACCESS.pack(offset, region, count), flags)


def replies(engine):
    return [(wire.HEADER.unpack_from(data), data[16:], fds) for data, fds in engine.data_to_send()]


def fd_is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def device():
    dev = SmallDevice()
    yield dev
    dev.close()


@pytest.fixture
def engine(device):
    eng = ServerEngine(device)
    eng.receive_data(version_msg(caps={"max_msg_fds": 16, "max_data_xfer_size": 4096}))
    eng.data_to_send()
    eng.events()
    return eng


def test_before_version_only_version_is_allowed_and_anything_else_is_answered_then_closed(device):
    eng = ServerEngine(device)
    eng.receive_data(read_msg(3, 7, 0, 4))
    [((msg_id, cmd, size, flags, err), payload, fds)] = replies(eng)
    assert (msg_id, cmd, size, flags, err) == (3, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert eng.state is State.CLOSED            # as libvfio-user: a failed negotiation ends it
    [failed, gone] = eng.events()
    assert isinstance(failed, CommandFailed) and isinstance(gone, Disconnected)
    assert gone.reason.startswith("negotiation failed: REGION_READ not allowed")


@pytest.mark.parametrize("proposed,expected", [(0, 0), (1, 1), (2, 2), (9, 2)])
def test_version_reply_minor_is_at_most_the_proposed_one(device, proposed, expected):
    eng = ServerEngine(device)
    eng.receive_data(version_msg(minor=proposed, caps={"max_msg_fds": 16}))
    [((_, cmd, _, flags, _), payload, _)] = replies(eng)
    assert flags == wire.MSG_TYPE_REPLY and cmd == Command.VERSION
    reply = wire.Version.parse(payload)
    assert (reply.major, reply.minor) == (0, expected)
    assert payload.endswith(b"\0") and payload.count(b"\0", 4) == 1
    assert eng.state is State.READY


def test_version_capabilities_are_a_subset_no_larger_than_proposed(device):
    eng = ServerEngine(device)
    qemu = {"migration": {"pgsize": 4096, "max_bitmap_size": 268435456}, "max_msg_fds": 16,
            "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535, "write_multiple": True}
    eng.receive_data(version_msg(caps=qemu))
    [(_, payload, _)] = replies(eng)
    caps = wire.Version.parse(payload).capabilities["capabilities"]
    assert caps == {"max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535}
    [event] = eng.events()
    assert isinstance(event, Negotiated) and event.client_capabilities == qemu


def test_version_with_smaller_client_xfer_bounds_region_reads(engine):
    engine.receive_data(read_msg(1, 7, 0, 4096))
    engine.receive_data(read_msg(2, 0, 0, 4097))
    first, second = replies(engine)
    assert first[0][3] == wire.MSG_TYPE_REPLY and len(first[1]) == 16 + 4096
    assert second[0][3:] == (wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)


@pytest.mark.parametrize("payload", [
    b"\0\0",                                             # short
    b"\x01\0\0\0",                                       # major 1
    b"\0\0\0\0{\"capabilities\":{}}",                    # no NUL
    b"\0\0\0\0not json\0",
    b"\0\0\0\0[]\0",
    b"\0\0\0\0{\"capabilities\":[]}\0",
    b"\0\0\0\0{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0",
    b"\0\0\0\0{\"capabilities\":{\"max_data_xfer_size\":-1}}\0",
    b"\0\0\0\0{\"capabilities\":{\"max_data_xfer_size\":0}}\0",
    b"\0\0\0\0{\"capabilities\":{\"write_multiple\":1}}\0",
    b"\0\0\0\0\xff\xfe\0",
])
def test_bad_version_proposals_get_einval_then_the_connection_closes(device, payload):
    eng = ServerEngine(device)
    eng.receive_data(wire.message(1, Command.VERSION, payload))
    [((_, _, size, flags, err), _, _)] = replies(eng)
    assert (size, flags, err) == (16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    # "closes the connection if it cannot support the advertised version" (and, as
    # libvfio-user, after any VERSION it cannot accept)
    assert eng.state is State.CLOSED
    assert eng.events()[-1].reason.startswith("negotiation failed: ")
    eng.receive_data(version_msg(2))            # nothing more is read
    assert replies(eng) == []


@pytest.mark.parametrize("depth,accepted", [(32, True), (33, False), (5000, False)])
def test_version_json_nesting_is_bounded_as_json_c_bounds_it(device, depth, accepted):
    # {"capabilities": {"x": [[...]]}}: the two objects and depth-2 arrays
    doc = b'{"capabilities":{"x":' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}\0"
    eng = ServerEngine(device)
    eng.receive_data(wire.message(1, Command.VERSION, b"\0\0\0\0" + doc))
    [((_, _, _, flags, err), _, _)] = replies(eng)
    if accepted:
        assert (flags, err, eng.state) == (wire.MSG_TYPE_REPLY, 0, State.READY)
    else:
        assert (flags, err, eng.state) == (wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL, State.CLOSED)
        failed = next(e for e in eng.events() if isinstance(e, CommandFailed))
        assert "nested deeper than 32 levels" in failed.message


def test_second_version_is_refused(engine):
    engine.receive_data(version_msg(9))
    [(head, _, _)] = replies(engine)
    assert head == (9, 1, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)


def test_bytes_fed_one_at_a_time_give_the_same_replies(engine, device):
    device.config[0x40:0x44] = b"\x01\x02\x03\x04"
    stream = read_msg(1, 7, 0x40, 4) + read_msg(2, 7, 0x41, 2)
    for i in range(len(stream)):
        assert engine.next_read_size() >= 1
        engine.receive_data(stream[i:i + 1])
    (h1, p1, _), (h2, p2, _) = replies(engine)
    assert (h1[0], p1[16:]) == (1, b"\x01\x02\x03\x04")
    assert (h2[0], p2[16:]) == (2, b"\x02\x03")


def test_next_read_size_asks_for_header_then_payload(engine):
    assert engine.next_read_size() == 16
    msg = wire.message(4, Command.REGION_WRITE, wire.REGION_ACCESS.pack(0, 0, 8) + bytes(8))
    engine.receive_data(msg[:16])
    assert engine.next_read_size() == 24
    engine.receive_data(msg[16:20])
    assert engine.next_read_size() == 20


@pytest.mark.parametrize("header", [
    wire.HEADER.pack(1, 9, 8, 0, 0),              # msg_size smaller than a header
    wire.HEADER.pack(1, 9, 0xFFFF_FFFF, 0, 0),    # absurd msg_size
], ids=["size-8", "size-4G"])
def test_unframeable_msg_size_is_answered_einval_then_the_connection_closes(engine, header):
    engine.dma.map(0x10000, 0x1000, 3, 0, None)
    engine.receive_data(header)
    [(head, _, _)] = replies(engine)
    assert head == (1, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert engine.state is State.CLOSED
    failed, gone = engine.events()
    assert isinstance(failed, CommandFailed) and isinstance(gone, Disconnected)
    assert gone.reason.startswith("unframeable message: id=1 cmd=9 msg_size ")
    assert len(engine.dma) == 0
    engine.receive_data(read_msg(1, 7, 0, 4))    # nothing happens after close
    assert replies(engine) == []


@pytest.mark.parametrize("flags,why", [
    (0x40, "unknown header flags 0x40"),
    (0x8000_0000, "unknown header flags 0x80000000"),
    (0x2, "message type 2 is neither command nor reply"),
    (0xF, "message type 15 is neither command nor reply"),
])
def test_unknown_flags_and_types_are_answered_einval_and_the_stream_stays_in_step(engine, device, flags, why):
    device.config[0x40:0x44] = b"\x01\x02\x03\x04"
    bad = wire.HEADER.pack(1, Command.REGION_READ, 32, flags, 0) + wire.REGION_ACCESS.pack(0x40, 7, 4)
    engine.receive_data(bad + read_msg(2, 7, 0x40, 4))
    (first, _, _), (second, payload, _) = replies(engine)
    assert first == (1, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert second[0] == 2 and second[3] == wire.MSG_TYPE_REPLY and payload[16:] == b"\x01\x02\x03\x04"
    assert engine.state is State.READY
    [failed] = engine.events()
    assert failed.message == why


def test_more_fds_than_max_msg_fds_are_answered_einval_and_closed(engine):
    fds = [os.eventfd(0) for _ in range(engine.max_msg_fds + 1)]
    engine.receive_data(read_msg(1, 7, 0, 4), fds)
    [(head, _, _)] = replies(engine)
    assert head == (1, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert not any(fd_is_open(fd) for fd in fds)
    assert engine.state is State.READY
    # the transport saw MSG_CTRUNC (the kernel dropped fds that did not fit): the same
    engine.receive_data(read_msg(2, 7, 0, 4), [os.eventfd(0)], fds_lost=True)
    engine.receive_data(read_msg(3, 7, 0, 4))
    (lost, _, _), (fine, _, _) = replies(engine)
    assert lost == (2, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert fine[0] == 3 and fine[3] == wire.MSG_TYPE_REPLY


def test_no_reply_flag_suppresses_reply_and_error_reply(engine, device):
    engine.receive_data(wire.message(1, Command.REGION_WRITE, wire.REGION_ACCESS.pack(0x10, 0, 4) + b"abcd",
                                     wire.FLAG_NO_REPLY))
    engine.receive_data(read_msg(2, 0, 0xFFFF, 4, wire.FLAG_NO_REPLY))
    assert replies(engine) == []
    assert device.regs[0x10:0x14] == b"abcd"
    assert [type(e) for e in engine.events()] == [CommandFailed]


@pytest.mark.parametrize("cmd", [0, 14, 15, 17, 18, 99, 0xFFFF, Command.DMA_READ, Command.DMA_WRITE])
def test_unsupported_commands_get_einval(engine, cmd):
    engine.receive_data(wire.message(5, cmd, b"\0" * 24))
    [(head, _, _)] = replies(engine)
    assert head == (5, cmd, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)
    assert engine.state is State.READY


def test_device_oserror_errno_is_the_reply(engine):
    engine.receive_data(read_msg(1, 0, FAIL_REG, 4))
    [(head, _, _)] = replies(engine)
    assert head == (1, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EIO)


def test_device_bug_becomes_eio_not_a_crash(engine, device, monkeypatch):
    def broken(*args):
        raise KeyError("device bug")
    monkeypatch.setattr(device, "region_read", broken)
    engine.receive_data(read_msg(1, 7, 0, 4))
    [(head, _, _)] = replies(engine)
    assert head == (1, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EIO)
    [failed] = engine.events()
    assert "KeyError" in failed.message


def test_fds_on_a_command_that_takes_none_are_closed(engine):
    fd = os.eventfd(0)
    engine.receive_data(read_msg(1, 7, 0, 4), [fd])
    assert not fd_is_open(fd)


def test_region_info_full_reply_carries_exactly_the_device_fd(engine, device):
    req = wire.RegionInfo.build({"argsz": 256, "flags": 0, "index": 2, "cap_offset": 0, "size": 0, "offset": 0})
    engine.receive_data(wire.message(1, Command.DEVICE_GET_REGION_INFO, req))
    [(_, payload, fds)] = replies(engine)
    assert fds == (device.mem_fd,)
    assert wire.RegionInfo.parse(payload).argsz == len(payload) == 64


def test_connection_lost_drops_dma_and_irq_state_but_not_device_state(engine, device):
    efd = os.eventfd(0)
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 1 << 20)
    engine.receive_data(wire.message(1, Command.DMA_MAP, wire.DmaMap.build(
        {"argsz": 32, "flags": 3, "offset": 0, "address": 1 << 32, "size": 1 << 20})), [os.dup(memfd)])
    engine.receive_data(wire.message(2, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x24, "index": 2, "start": 1, "count": 1, "data": b""})), [efd])
    engine.receive_data(wire.message(3, Command.REGION_WRITE, wire.REGION_ACCESS.pack(0x20, 0, 2) + b"hi"))
    assert [h[3] for h, _, _ in replies(engine)] == [1, 1, 1]
    assert isinstance(engine.events()[0], DmaMapped)
    assert fd_is_open(efd) and len(engine.dma) == 1
    engine.receive_data(b"")
    assert not fd_is_open(efd)
    assert len(engine.dma) == 0
    assert engine.irqs.vector(2, 1).eventfd is None
    assert device.regs[0x20:0x22] == b"hi"
    assert isinstance(engine.events()[-1], Disconnected)
    os.close(memfd)


def test_interrupt_sink_writes_one_to_the_eventfd(engine, device):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    engine.receive_data(wire.message(1, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x24, "index": 2, "start": 3, "count": 1, "data": b""})), [os.dup(efd)])
    replies(engine)
    device.set_interrupt_sink(engine.interrupt_sink)
    engine.receive_data(wire.message(2, Command.REGION_WRITE, wire.REGION_ACCESS.pack(DOORBELL, 0, 1) + b"\x03"))
    assert int.from_bytes(os.read(efd, 8), "little") == 1
    os.close(efd)


def test_server_to_client_dma_read_and_its_reply(engine):
    msg_id = engine.send_dma_read(0x1000, 8)
    [(head, payload, _)] = replies(engine)
    assert head[:2] == (msg_id, Command.DMA_READ) and head[3] == wire.MSG_TYPE_COMMAND
    assert wire.DMA_ACCESS.unpack(payload) == (0x1000, 8)
    engine.receive_data(wire.message(msg_id, Command.DMA_READ, payload + b"8 bytes!", wire.MSG_TYPE_REPLY))
    engine.receive_data(wire.message(999, Command.DMA_READ, b"", wire.MSG_TYPE_REPLY))  # unsolicited: ignored
    assert engine.events() == [PeerReply(msg_id, Command.DMA_READ, 0, payload + b"8 bytes!")]
    assert replies(engine) == []


def test_a_full_eventfd_counter_makes_the_vector_pending_instead_of_blocking(engine, device):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    engine.receive_data(wire.message(1, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x24, "index": 2, "start": 0, "count": 1, "data": b""})), [os.dup(efd)])
    os.write(efd, (0xFFFF_FFFF_FFFF_FFFE).to_bytes(8, "little"))   # a hostile client fills it
    engine.interrupt_sink(2, 0)                                     # must not block the server
    vector = engine.irqs.vector(2, 0)
    assert vector.pending and vector.fired == 0
    os.read(efd, 8)                                                 # drained: the next one fires
    engine.interrupt_sink(2, 0)
    assert not vector.pending and vector.fired == 1
    os.close(efd)


def test_fds_belong_to_the_message_whose_bytes_they_came_with(engine):
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 0x10000)
    first = wire.message(1, Command.DMA_MAP, wire.DmaMap.build(
        {"argsz": 32, "flags": 3, "offset": 0, "address": 0x100000, "size": 0x10000}))
    second = wire.message(2, Command.DMA_MAP, wire.DmaMap.build(
        {"argsz": 32, "flags": 3, "offset": 0, "address": 0x200000, "size": 0x10000}))
    engine.receive_data(first[:16], [os.dup(memfd)])     # header first, with its fd
    engine.receive_data(first[16:])
    engine.receive_data(second)
    assert [h[3] for h, _, _ in replies(engine)] == [1, 1]
    with_fd, without_fd = engine.dma.regions()
    assert with_fd.mapping is not None and without_fd.mapping is None
    os.close(memfd)



# -- receive_read: one recvmsg() that may run past a message's end ------------------------------

def _dma_map_msg(msg_id, address):
    return wire.message(msg_id, Command.DMA_MAP, wire.DmaMap.build(
        {"argsz": 32, "flags": 3, "offset": 0, "address": address, "size": 0x10000}))


@pytest.mark.parametrize("ends", [48, 80, 96, 112, 130, 144], ids=lambda n: f"read-ends-at-{n}")
def test_a_read_s_fds_go_to_the_message_it_ended_in(engine, ends):
    """Three DMA_MAPs of 48 bytes back to back, one read of their first ``ends`` bytes with an
    fd, then the rest: only the map whose bytes hold the read's last one gets the fd."""
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 0x10000)
    stream = b"".join(_dma_map_msg(n, (n + 1) << 20) for n in range(3))
    engine.receive_read(stream[:ends], [os.dup(memfd)])
    if ends < len(stream):
        engine.receive_read(stream[ends:])
    assert [(h[0], h[3]) for h, _, _ in replies(engine)] == [(n, wire.MSG_TYPE_REPLY) for n in range(3)]
    assert [r.mapping is not None for r in engine.dma.regions()] == [n == (ends - 1) // 48 for n in range(3)]
    os.close(memfd)


def test_fds_lost_on_a_read_refuse_the_message_it_ended_in_only(engine):
    stream = read_msg(1, 7, 0, 4) + read_msg(2, 7, 0, 4) + read_msg(3, 7, 0, 4)
    fd = os.eventfd(0)
    engine.receive_read(stream[:40], [fd], fds_lost=True)     # ends 8 bytes into the second
    engine.receive_read(stream[40:])
    assert [h for h, _, _ in replies(engine)] == [
        (1, 9, 36, wire.MSG_TYPE_REPLY, 0), (2, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL),
        (3, 9, 36, wire.MSG_TYPE_REPLY, 0)]
    assert not fd_is_open(fd)


def test_a_read_that_runs_into_an_unframeable_header_closes_its_fds(engine):
    fd = os.eventfd(0)
    engine.receive_read(read_msg(1, 7, 0, 4) + wire.HEADER.pack(2, 9, 8, 0, 0) + bytes(8), [fd])
    assert [h for h, _, _ in replies(engine)] == [
        (1, 9, 36, wire.MSG_TYPE_REPLY, 0), (2, 9, 16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR, errno.EINVAL)]
    assert engine.state is State.CLOSED and not fd_is_open(fd)

def _error(engine, msg) -> tuple[int, str]:
    """Feed one message that must fail: (its reply's errno, the reason the engine gives)."""
    engine.receive_data(msg)
    [((_, _, size, flags, err), _, _)] = replies(engine)
    assert (size, flags) == (16, wire.MSG_TYPE_REPLY | wire.FLAG_ERROR)
    [failed] = [e for e in engine.events() if isinstance(e, CommandFailed)]
    return err, failed.message


def test_dma_unmap_argsz_is_the_largest_reply_the_client_accepts(engine):
    # "argsz is the maximum size of the reply payload": larger than the 24-byte entry is fine
    engine.dma.map(0x10000, 0x1000, 3, 0, None)
    request = wire.DmaUnmap.build({"argsz": 4096, "flags": 0, "address": 0x10000, "size": 0x1000})
    engine.receive_data(wire.message(1, Command.DMA_UNMAP, request))
    [(head, payload, _)] = replies(engine)
    assert head[3] == wire.MSG_TYPE_REPLY and payload == request and len(engine.dma) == 0
    # below the entry, or above max_data_xfer_size (libvfio-user's bound): EINVAL
    for argsz in (23, engine.server_max_xfer + 1):
        err, why = _error(engine, wire.message(2, Command.DMA_UNMAP, wire.DmaUnmap.build(
            {"argsz": argsz, "flags": 0, "address": 0x10000, "size": 0x1000})))
        assert err == errno.EINVAL and why.startswith(f"DMA_UNMAP: argsz {argsz} outside 24..")


def test_device_feature_get_may_offer_more_reply_room_than_its_request(engine):
    get = wire.DeviceFeature.build({"argsz": 4096, "flags": wire.FEATURE_MIGRATION | wire.DEVICE_FEATURE_GET,
                                    "data": b""})
    err, why = _error(engine, wire.message(1, Command.DEVICE_FEATURE, get))
    # refused because the device offers no feature (EINVAL, as libvfio-user), not for its argsz
    assert (err, why) == (errno.EINVAL, "DEVICE_FEATURE 1: not supported by this device")
    probe = wire.DeviceFeature.build({"argsz": 8, "flags": wire.FEATURE_MIGRATION | wire.DEVICE_FEATURE_PROBE,
                                      "data": bytes(8)})
    err, why = _error(engine, wire.message(2, Command.DEVICE_FEATURE, probe))
    assert (err, why) == (errno.EINVAL, "DEVICE_FEATURE: argsz 8 < 16, the size of the reply")


def test_set_irqs_count_0_needs_start_0_as_in_libvfio_user(engine):
    efd = os.eventfd(0)
    engine.receive_data(wire.message(1, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x24, "index": 2, "start": 0, "count": 1, "data": b""})), [efd])
    replies(engine)
    err, why = _error(engine, wire.message(2, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x21, "index": 2, "start": 1, "count": 0, "data": b""})))
    assert err == errno.EINVAL and "count 0 is only valid with start 0" in why
    assert engine.irqs.vector(2, 0).eventfd is not None            # nothing was disabled
    engine.receive_data(wire.message(3, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": 0x21, "index": 2, "start": 0, "count": 0, "data": b""})))
    [(head, _, _)] = replies(engine)
    assert head[3] == wire.MSG_TYPE_REPLY and engine.irqs.vector(2, 0).eventfd is None
    assert not fd_is_open(efd)


@pytest.mark.parametrize("index", [3, 4])
def test_err_and_req_indexes_only_trigger(engine, index):
    err, why = _error(engine, wire.message(1, Command.DEVICE_SET_IRQS, wire.SetIrqs.build(
        {"argsz": 20, "flags": wire.IRQ_SET_DATA_NONE | wire.IRQ_SET_ACTION_MASK, "index": index, "start": 0,
         "count": 1, "data": b""})))
    assert (err, why) == (errno.EINVAL, f"SET_IRQS: index {index} takes ACTION_TRIGGER only")


def test_zero_length_region_access_succeeds_without_reaching_the_device(engine, device, monkeypatch):
    def must_not_be_called(*args):
        raise AssertionError("the device was called for a zero-length access")
    monkeypatch.setattr(device, "region_read", must_not_be_called)
    monkeypatch.setattr(device, "region_write", must_not_be_called)
    engine.receive_data(read_msg(1, 0, 0x10, 0))
    engine.receive_data(wire.message(2, Command.REGION_WRITE, wire.REGION_ACCESS.pack(0x10, 0, 0)))
    (r, rp, _), (w, wp, _) = replies(engine)
    assert (r[3], rp) == (wire.MSG_TYPE_REPLY, wire.REGION_ACCESS.pack(0x10, 0, 0))
    assert (w[3], wp) == (wire.MSG_TYPE_REPLY, wire.REGION_ACCESS.pack(0x10, 0, 0))


def test_region_read_ignores_bytes_after_the_request_as_libvfio_user(engine, device):
    device.config[0x40:0x44] = b"\x01\x02\x03\x04"
    engine.receive_data(wire.message(1, Command.REGION_READ, wire.REGION_ACCESS.pack(0x40, 7, 4) + b"junk"))
    [(head, payload, _)] = replies(engine)
    assert head[3] == wire.MSG_TYPE_REPLY and payload == wire.REGION_ACCESS.pack(0x40, 7, 4) + b"\x01\x02\x03\x04"


# -- receive_message: a whole message framed by the transport ---------------------------------

def _both_ways(device, messages):
    """(replies, events) of feeding ``messages`` to two engines: one through receive_message
    (header and payload split as the server reads them), one through receive_data."""
    out = []
    for whole in (True, False):
        eng = ServerEngine(device)
        for msg in [version_msg(caps={"max_msg_fds": 16, "max_data_xfer_size": 4096})] + messages:
            if whole:
                eng.receive_message(msg[:16], msg[16:])
            else:
                eng.receive_data(msg)
        out.append((replies(eng), [type(e).__name__ for e in eng.events()], eng.state))
    return out


@pytest.mark.parametrize("messages, errors", [
    ([read_msg(1, 7, 0, 4)], [0]),                                    # a trapped read
    ([read_msg(2, 7, 0, 4, flags=wire.FLAG_NO_REPLY)], []),           # no reply asked
    ([read_msg(3, 99, 0, 4)], [errno.EINVAL]),                        # bad region
    ([read_msg(4, 0, FAIL_REG, 4)], [errno.EIO]),                     # the device raises
    ([wire.message(5, Command.REGION_WRITE, wire.REGION_ACCESS.pack(DOORBELL, 0, 4) + b"\1\0\0\0")], [0]),
    ([wire.message(6, 0x7777, b"")], [errno.EINVAL]),                 # unknown command
    ([wire.message(7, Command.DEVICE_RESET, b"")], [0]),
    ([wire.message(8, Command.DMA_READ, b"\0" * 8, wire.MSG_TYPE_REPLY)], []),   # a reply never asked for
])
def test_receive_message_does_what_receive_data_does(device, messages, errors):
    whole, fed = _both_ways(device, messages)
    assert whole == fed
    assert [header[4] for header, _, _ in whole[0][1:]] == errors


def test_receive_message_with_a_size_its_bytes_do_not_match_goes_the_general_way(engine):
    msg = read_msg(9, 7, 0, 4)
    engine.receive_message(msg[:16], msg[16:24])        # 8 of its 16 payload bytes
    assert engine.assembling and engine.assembled_bytes == 24
    assert engine.data_to_send() == []
    engine.receive_data(msg[24:])
    [((msg_id, cmd, size, flags, err), payload, fds)] = replies(engine)
    assert (msg_id, cmd, flags, err) == (9, Command.REGION_READ, wire.MSG_TYPE_REPLY, 0)


def test_receive_message_after_a_message_begun_keeps_the_bytes_in_order(engine):
    first, second = read_msg(10, 7, 0, 4), read_msg(11, 7, 4, 4)
    engine.receive_data(first[:5])
    engine.receive_message(first[5:21], first[21:] + second)   # (not a header: the buffer decides)
    assert [h[0] for h, _, _ in replies(engine)] == [10, 11]
