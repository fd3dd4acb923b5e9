"""What both vfio-user backends' servers share: one owner thread that polls, a wake-up eventfd,
work other threads hand to that thread, and the lifecycle (start in a thread, serve_forever
until close() or SIGTERM, close).

A backend implements ``_prepare`` (listen, or check it may start), ``_loop`` (poll until
``_stop`` is set, running ``_run_jobs`` when ``_wake_r`` is readable) and ``_teardown``
(release what it holds; then ``_close_wake``), and the rest of ``VfioUserBackend``
(hugepfn.device.vfio_user.backends): ``attached``, ``status()``, DMA access.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable


class ServerLoop:
    backend_name = ""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake_r = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)   # polled by the owner loop
        self._jobs: deque[tuple[Callable, Callable | None]] = deque()   # (job, what tells its caller
        #                                                    the server stopped before running it)
        self._thread: threading.Thread | None = None
        self._owner: int | None = None              # the thread in _loop, while it runs
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        """Serve in a background thread (the owner thread)."""
        self._prepare()
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until close() or, in the main thread, SIGTERM."""
        self._prepare()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        try:
            self._run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.close()

    def close(self) -> None:
        self._request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        self._owner = threading.get_ident()
        try:
            self._loop()
        finally:
            self._owner = None
            while self._jobs:
                _, stopped = self._jobs.popleft()
                if stopped is not None:
                    stopped(OSError(errno.ESHUTDOWN, "server stopped"))
            self._loop_finished()

    def _request_stop(self) -> None:
        self._stop.set()
        self._wake()

    # -- handing work to the owner thread ------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_r, 1)
        except OSError:
            pass            # closed, or the counter is saturated: the owner is awake anyway

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_r)
        except BlockingIOError:
            pass

    def _post(self, job: Callable, stopped: Callable[[BaseException], None] | None = None) -> None:
        """Run ``job(*context)`` in the owner thread at its next wake-up; ``stopped(exc)`` instead
        when the loop ends before it ran."""
        self._jobs.append((job, stopped))
        self._wake()

    def _run_jobs(self, *context) -> None:
        jobs = self._jobs
        while jobs:
            jobs.popleft()[0](*context)

    def call_in_owner(self, fn: Callable[[], object], timeout: float = 10.0):
        """Run ``fn`` in the owner thread and return its result (at once when called from it, or
        before the server runs)."""
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "server is closed")
        if self._owner in (None, threading.get_ident()):
            return fn()
        future: Future = Future()

        def job(*_context):
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._post(job, future.set_exception)
        return future.result(timeout)

    def _close_wake(self) -> None:
        if self._wake_r >= 0:
            os.close(self._wake_r)
            self._wake_r = -1

    # -- what a backend implements -----------------------------------------------------------------
    def _thread_name(self) -> str:
        return f"vfio-user {self.backend_name}"

    def _prepare(self) -> None:
        """Before the loop runs (in start() or serve_forever())."""

    def _loop(self) -> None:
        raise NotImplementedError

    def _loop_finished(self) -> None:
        """In the owner thread, once the loop has returned."""

    def _teardown(self) -> None:
        raise NotImplementedError
