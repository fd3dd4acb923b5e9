"""VERSION: negotiation as QEMU's vfio-user-pci expects it."""
from __future__ import annotations

import errno

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.host.vfio_user import VfioUserClient, VfioUserProtocolError

from .helpers import QEMU_CAPS, Command, error_of, still_answers


def test_qemu_proposal_gets_0_0_and_a_subset_within_qemu_limits(server, socket_path):
    with VfioUserClient.connect(socket_path) as c:
        caps = c.negotiate(QEMU_CAPS, 0, 0)
        assert c.server_version == (0, 0)
        assert set(caps) <= set(QEMU_CAPS)
        assert 1 <= caps["max_msg_fds"] <= 16
        assert caps.get("max_data_xfer_size", 1 << 20) <= 64 << 20
        still_answers(c)


def test_reply_is_nul_terminated_json_object(server, socket_path):
    with VfioUserClient.connect(socket_path) as c:
        reply = c.request(Command.VERSION, wire.Version.build(
            {"major": 0, "minor": 0, "capabilities": {"capabilities": QEMU_CAPS}}))
        assert reply.payload[:4] == b"\0\0\0\0"
        assert reply.payload.endswith(b"\0") and b"\0" not in reply.payload[4:-1]
        assert wire.Version.parse(reply.payload).capabilities["capabilities"]


def test_higher_minor_proposal_is_answered_with_at_most_that_minor(server, socket_path):
    with VfioUserClient.connect(socket_path) as c:
        caps = c.negotiate({"max_msg_fds": 8, "max_data_xfer_size": 65536}, 0, 7)
        assert c.server_version[0] == 0 and c.server_version[1] <= 7
        assert set(caps) <= {"max_msg_fds", "max_data_xfer_size"}
        assert c.max_data_xfer_size <= 65536


def test_without_capabilities_the_reply_has_none_we_did_not_propose(server, socket_path):
    with VfioUserClient.connect(socket_path) as c:
        caps = c.negotiate({}, 0, 0)
        assert caps == {} or set(caps) <= {"max_msg_fds", "max_data_xfer_size"}
        still_answers(c)


def _rejected(socket_path, payload: bytes) -> str:
    """Outcome of a bad VERSION: 'EINVAL' (error reply) or 'closed' (server hung up)."""
    with VfioUserClient.connect(socket_path) as c:
        try:
            err = error_of(c, Command.VERSION, payload)
        except VfioUserProtocolError:
            return "closed"
        return errno.errorcode[err]


@pytest.mark.parametrize("payload", [
    b"\x01\x00\x00\x00",                                   # major 1
    b"\0\0\0\0{\"capabilities\":{}}",                      # JSON without its NUL
    b"\0\0\0\0{broken\0",
    b"\0\0",
], ids=["major1", "no-nul", "bad-json", "short"])
def test_bad_proposals_are_rejected_and_the_next_client_negotiates(server, socket_path, backend, payload):
    outcome = _rejected(socket_path, payload)
    assert outcome == ("EINVAL" if backend == "python" else outcome) and outcome in ("EINVAL", "closed")
    with VfioUserClient.connect(socket_path) as c:
        c.negotiate(QEMU_CAPS)
        still_answers(c)


def test_commands_before_version_are_refused(server, socket_path, backend):
    with VfioUserClient.connect(socket_path) as c:
        try:
            err = error_of(c, Command.DEVICE_GET_INFO, wire.DeviceInfo.build(
                {"argsz": 16, "flags": 0, "num_regions": 0, "num_irqs": 0}))
            assert err == errno.EINVAL
        except VfioUserProtocolError:
            assert backend != "python"     # libvfio-user hangs up instead
