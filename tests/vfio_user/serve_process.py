"""`hugepfn serve` as a real process whose stdout and stderr are read line by line, with deadlines."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

SERVE = [sys.executable, "-m", "hugepfn.cli.main", "serve"]


class ServeProcess:
    def __init__(self, *args: str, program: list[str] | None = None, pass_fds=(), env=None):
        self.proc = subprocess.Popen([*(program or SERVE), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
                                     env={**os.environ, **(env or {})})
        self.out: list[str] = []
        self.err: list[str] = []
        self._pending = {self.proc.stdout: b"", self.proc.stderr: b""}
        self._selector = selectors.DefaultSelector()
        for stream in self._pending:
            self._selector.register(stream, selectors.EVENT_READ)

    def _read(self, timeout: float) -> bool:
        """Read what is there; False once both streams are at EOF."""
        if not self._selector.get_map():
            return False
        for key, _ in self._selector.select(timeout):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                self._selector.unregister(key.fileobj)
                continue
            data = self._pending[key.fileobj] + chunk
            *lines, self._pending[key.fileobj] = data.split(b"\n")
            target = self.out if key.fileobj is self.proc.stdout else self.err
            target.extend(line.decode() for line in lines)
        return True

    def wait_for(self, text: str, stream: str = "out", timeout: float = 30.0) -> str:
        """The first line of stdout ("out") or stderr ("err") that contains ``text``."""
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while True:
            for line in lines:
                if text in line:
                    return line
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} on std{stream} in {timeout} s: out={self.out} err={self.err}"
            if not self._read(min(remaining, 0.5)) and self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}) before {text!r}: "
                                     f"out={self.out} err={self.err}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then read everything to EOF; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, min(0.5, deadline - time.monotonic()))):
            assert time.monotonic() < deadline, f"serve did not finish: out={self.out} err={self.err}"
        for stream, rest in self._pending.items():
            if rest:
                (self.out if stream is self.proc.stdout else self.err).append(rest.decode())
        self._selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
