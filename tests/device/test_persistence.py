"""The poison list survives restarts, torn writes and corruption are reported, never dropped."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hugepfn.device.gpu import GpuDevice
from hugepfn.device.poison_store import CRASH_ENV, DeviceIdentity, PoisonFileError, PoisonStore, encode
from hugepfn.device.profiles import load_profile

CHILD = textwrap.dedent("""
    import sys
    from hugepfn.device.gpu import GpuDevice
    state_dir, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dev = GpuDevice.from_profile("tiny", state_dir=state_dir)
    for i in range(first, first + count):
        dev.poison.inject(bar=2, offset=i * 256)
        print(i, flush=True)
""")


def run_child(state_dir, first, count, crash_at=None):
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-c", CHILD, str(state_dir), str(first), str(count)],
                          env=env, capture_output=True, text=True, timeout=60)


def loaded_offsets(state_dir):
    with GpuDevice.from_profile("tiny", state_dir=state_dir) as dev:
        return [s for s, _e in dev.poison.ranges(2)]


def test_poison_survives_restart(tmp_path):
    with GpuDevice.from_profile("tiny", state_dir=tmp_path) as dev:
        dev.poison.inject(bar=2, offset=0x1000, granularity=4096)
        dev.poison.inject(bar=2, offset=0x100000)
    with GpuDevice.from_profile("tiny", state_dir=tmp_path) as dev:
        assert list(dev.poison.ranges(2)) == [(0x1000, 0x2000), (0x100000, 0x100040)]
        assert dev.poison.store.generation == 2
        # restart does not replay records: the queue reports new events only
        assert dev.queued_errors() == []


def test_repair_is_persisted(tmp_path):
    with GpuDevice.from_profile("tiny", state_dir=tmp_path) as dev:
        dev.poison.inject(bar=2, offset=0, granularity=256)
        dev.poison.repair(2, 0, 128)
    assert loaded_offsets(tmp_path) == [128]


def test_no_state_dir_means_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with GpuDevice.from_profile("tiny") as dev:
        dev.poison.inject(bar=2, offset=0)
        assert dev.poison.store is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("crash_at, survivors", [
    ("mid-write", [0, 256, 512]),            # temp file half written: old list intact
    ("before-rename", [0, 256, 512]),        # temp complete but not renamed: old list
    ("after-rename", [0, 256, 512, 768]),    # renamed: new list
])
def test_sigkill_during_save_leaves_old_or_new_list(tmp_path, crash_at, survivors):
    assert run_child(tmp_path, 0, 3).returncode == 0
    proc = run_child(tmp_path, 3, 1, crash_at=crash_at)
    assert proc.returncode == -signal.SIGKILL
    assert loaded_offsets(tmp_path) == survivors
    if crash_at == "mid-write":
        tmp = tmp_path / (PoisonStore.FILENAME + ".tmp")
        four = encode([(2, i * 256, i * 256 + 64) for i in range(4)], 4, DeviceIdentity.of(load_profile("tiny")))
        assert tmp.stat().st_size == len(four) // 2                # half of the 4-entry file
    # the next save replaces any stale temp file and goes on from the survivors
    assert run_child(tmp_path, 10, 1).returncode == 0
    assert loaded_offsets(tmp_path) == survivors + [2560]


def test_sigkill_at_a_random_moment_of_a_write_loop(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "0", "100000"],
                            stdout=subprocess.PIPE, text=True)
    seen = -1
    for line in proc.stdout:
        seen = int(line)
        if seen >= 150:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    offsets = loaded_offsets(tmp_path)
    assert len(offsets) >= seen + 1                 # everything reported done is durable
    assert offsets == [i * 256 for i in range(len(offsets))]   # and nothing else: a prefix


class TestCorruptFiles:
    @pytest.fixture
    def saved(self, tmp_path):
        with GpuDevice.from_profile("tiny", state_dir=tmp_path) as dev:
            for i in range(4):
                dev.poison.inject(bar=2, offset=i * 4096)
        return tmp_path / PoisonStore.FILENAME

    def expect_error(self, path, fragment):
        with pytest.raises(PoisonFileError) as exc:
            GpuDevice.from_profile("tiny", state_dir=path.parent)
        message = str(exc.value)
        assert fragment in message and str(path) in message and "\n" not in message

    def test_flipped_byte_is_a_checksum_mismatch(self, saved):
        raw = bytearray(saved.read_bytes())
        raw[40] ^= 0x01
        saved.write_bytes(raw)
        self.expect_error(saved, "checksum mismatch")

    def test_truncated_file_is_torn(self, saved):
        saved.write_bytes(saved.read_bytes()[:-10])
        self.expect_error(saved, "torn or truncated")

    def test_empty_file(self, saved):
        saved.write_bytes(b"")
        self.expect_error(saved, "truncated")

    def test_foreign_file(self, saved):
        saved.write_bytes(b"#!/bin/sh\necho not poison\n" + bytes(64))
        self.expect_error(saved, "bad magic")

    def test_entry_outside_the_profile(self, saved, tmp_path):
        saved.write_bytes(encode([(2, 1 << 40, (1 << 40) + 64)], 1, DeviceIdentity.of(load_profile("tiny"))))
        self.expect_error(saved, "does not fit this device profile")

    def test_corrupt_file_is_left_in_place(self, saved):
        saved.write_bytes(saved.read_bytes()[:-1])
        before = saved.read_bytes()
        with pytest.raises(PoisonFileError):
            GpuDevice.from_profile("tiny", state_dir=saved.parent)
        assert saved.read_bytes() == before


def test_one_device_per_state_dir(tmp_path):
    with GpuDevice.from_profile("tiny", state_dir=tmp_path):
        with pytest.raises(OSError) as exc:
            GpuDevice.from_profile("tiny", state_dir=tmp_path)
        assert exc.value.errno == errno.EBUSY and "in use by another device" in str(exc.value)
    with GpuDevice.from_profile("tiny", state_dir=tmp_path):     # released by close()
        pass


def test_corrupt_file_does_not_keep_the_state_dir_locked(tmp_path):
    (tmp_path / PoisonStore.FILENAME).write_bytes(b"junk")
    for _ in range(2):
        with pytest.raises(PoisonFileError):
            GpuDevice.from_profile("tiny", state_dir=tmp_path)
