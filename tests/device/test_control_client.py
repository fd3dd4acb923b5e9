"""The control client against a hostile server: a bad reply is one ConnectionError, never a
RecursionError or an AttributeError (the `hugepfn inject` / `status` user sees one line)."""
from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from hugepfn.device.control import MAX_LINE, ControlClient


@pytest.mark.parametrize("reply", [
    b"[" * 100_000 + b"]" * 100_000 + b"\n",     # deeper than the recursion limit
    b"[1, 2]\n",                                   # JSON, not an object
    b"not json\n",
    b"x" * (MAX_LINE + 10) + b"\n",                # longer than a line may be
], ids=["deep", "list", "garbage", "long"])
def test_a_hostile_reply_is_one_connection_error(tmp_path, reply):
    os.chmod(tmp_path, 0o700)
    path = tmp_path / "ctl"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with ControlClient(path) as client:
        with pytest.raises(ConnectionError) as exc:
            client.status()
    assert exc.value.errno == errno.EPROTO
    assert str(exc.value).endswith(f"the control server's reply is not a JSON object of at most {MAX_LINE} bytes")
    thread.join(5)
    listener.close()
