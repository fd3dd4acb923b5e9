"""DEVICE_GET_REGION_IO_FDS: the device exports no ioeventfds."""
from __future__ import annotations

import errno

from hugepfn.abi import vfio_user as wire

from .helpers import Command, error_of, still_answers


def test_no_sub_regions_for_a_bar(raw, backend):
    req = wire.RegionIoFdsRequest.build({"argsz": 16, "flags": 0, "index": 0, "count": 0})
    reply = raw.wait_reply(raw.send(Command.DEVICE_GET_REGION_IO_FDS, req), Command.DEVICE_GET_REGION_IO_FDS)
    if reply.flags & wire.FLAG_ERROR:
        # libvfio-user answers EINVAL for a region without ioeventfds
        assert backend != "python" and reply.error_no == errno.EINVAL
        return
    parsed = wire.RegionIoFds.parse(reply.payload)
    assert (parsed.index, parsed.count, list(parsed.sub_regions)) == (0, 0, [])
    assert reply.fds == ()


def test_bad_index_is_einval(raw):
    req = wire.RegionIoFdsRequest.build({"argsz": 16, "flags": 0, "index": 77, "count": 0})
    assert error_of(raw, Command.DEVICE_GET_REGION_IO_FDS, req) == errno.EINVAL
    assert error_of(raw, Command.DEVICE_GET_REGION_IO_FDS, b"\0" * 8) == errno.EINVAL
    still_answers(raw)
