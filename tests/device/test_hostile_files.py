"""Files a user names are regular files of bounded size and depth, and a poison file only
loads into the device it was written for.  Every refusal is one line (exit 2 from the CLI),
quickly, with no traceback and nothing lost."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hugepfn.device.gpu import GpuDevice
from hugepfn.device.input_limits import MAX_TOML_BYTES, InputError, load_toml, nesting_depth, read_regular_file
from hugepfn.device.poison_store import PoisonFileError, PoisonStore
from hugepfn.device.profiles import ProfileError, load_profile
from hugepfn.fixtures import PROFILES
from hugepfn.host.scenario import load_scenario
from hugepfn.host.scenario.errors import ScenarioError

TINY = (PROFILES / "tiny.toml").read_text()


def hostile(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path of the given kind and the words the refusal must contain."""
    if kind == "dev-zero":
        return Path("/dev/zero"), "a character device, not a regular file"
    if kind == "fifo":
        path = tmp_path / "pipe.toml"
        os.mkfifo(path)
        return path, "a FIFO, not a regular file"
    if kind == "directory":
        path = tmp_path / "dir.toml"
        path.mkdir()
        return path, "a directory, not a regular file"
    if kind == "huge":
        path = tmp_path / "huge.toml"
        with open(path, "wb") as fh:
            fh.truncate(64 << 30)                     # 64 GiB, sparse: refused by its size
        return path, f"{64 << 30} bytes, more than the {MAX_TOML_BYTES}-byte limit"
    if kind == "deep-array":
        path = tmp_path / "deep.toml"
        path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
        return path, "tables and arrays nested deeper than 32 levels"
    if kind == "deep-inline":
        path = tmp_path / "deep.toml"
        path.write_text("x = " + "{a = " * 40 + "1" + "}" * 40 + "\n")
        return path, "tables and arrays nested deeper than 32 levels"
    if kind == "deep-dotted":
        path = tmp_path / "deep.toml"
        path.write_text(".".join(f"k{i}" for i in range(200)) + " = 1\n")
        return path, "tables and arrays nested deeper than 32 levels"
    if kind == "binary":
        path = tmp_path / "bin.toml"
        path.write_bytes(b"name = \"\xff\xfe\"\n")
        return path, "not UTF-8 text (byte 8)"
    raise AssertionError(kind)


KINDS = ["dev-zero", "fifo", "directory", "huge", "deep-array", "deep-inline", "deep-dotted", "binary"]


@pytest.mark.parametrize("kind", KINDS)
def test_profile_files_are_bounded(tmp_path, kind):
    path, words = hostile(tmp_path, kind)
    started = time.monotonic()
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert time.monotonic() - started < 5
    assert str(exc.value) == f"profile {str(path)!r}: {words}"


@pytest.mark.parametrize("kind", KINDS)
def test_scenario_files_are_bounded(tmp_path, kind):
    path, words = hostile(tmp_path, kind)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert str(exc.value) == f"{path}: {words}"


def test_a_file_that_grows_while_it_is_read_is_cut_at_the_limit(tmp_path):
    # /proc/self/... files report st_size 0 yet have content: the read is bounded anyway
    with pytest.raises(InputError) as exc:
        read_regular_file("/proc/self/smaps", 64, "smaps")
    assert str(exc.value) == "smaps: grew past the 64-byte limit while it was read"


def test_thirty_two_levels_are_accepted(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("x = " + "[" * 31 + "]" * 31 + "\n")     # the top table and 31 arrays
    assert nesting_depth(load_toml(path, "ok")) == 32


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge", "deep-array"])
def test_the_cli_says_one_line_and_exits_2(tmp_path, kind):
    path, words = hostile(tmp_path, kind)
    run = cli("run", str(path))
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"hugepfn run: error: {path}: {words}\n")
    lspci = cli("lspci", "--profile", str(path))
    assert (lspci.returncode, lspci.stderr) == (2, f"hugepfn lspci: error: profile {str(path)!r}: {words}\n")


def test_a_scenario_naming_dev_zero_as_its_profile(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[device]]\nname = "gpu"\nserve = { profile = "/dev/zero", backend = "python" }\n')
    run = cli("run", str(scenario))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == ["hugepfn run: error: device gpu: serve: profile '/dev/zero': a character "
                                       "device, not a regular file"]


# -- the poison file belongs to one device ------------------------------------------------------

def poisoned_state_dir(tmp_path, profile="tiny") -> Path:
    state = tmp_path / "state"
    with GpuDevice.from_profile(profile, state_dir=state) as dev:
        dev.poison.inject(bar=2, offset=0x1000, granularity=4096)
    return state


def test_a_poison_file_of_another_profile_is_refused_naming_both(tmp_path):
    state = poisoned_state_dir(tmp_path, "tiny")
    before = (state / PoisonStore.FILENAME).read_bytes()
    # gpu-8g's BAR2 would hold tiny's entry: before, it was loaded at another device address
    with pytest.raises(PoisonFileError) as exc:
        GpuDevice.from_profile("gpu-8g", state_dir=state)
    assert str(exc.value) == (f"{state / PoisonStore.FILENAME}: poison of another device, not loaded "
                              "(profile: 'tiny' in the file, 'gpu-8g' for this device)")
    assert (state / PoisonStore.FILENAME).read_bytes() == before          # nothing lost
    with GpuDevice.from_profile("tiny", state_dir=state) as dev:         # its own device still loads it
        assert list(dev.poison.ranges(2)) == [(0x1000, 0x2000)]


def test_same_name_other_bar_layout_is_refused(tmp_path):
    state = poisoned_state_dir(tmp_path, "tiny")
    moved = tmp_path / "tiny.toml"             # the same name, its memory BAR twice as large
    moved.write_text(TINY.replace('size = "64MiB"', 'size = "128MiB"'))
    with pytest.raises(PoisonFileError) as exc:
        GpuDevice.from_profile(moved, state_dir=state)
    assert str(exc.value).endswith(
        "(BAR layout: BAR0 registers 64KiB, BAR2 memory 64MiB (64MiB at dpa 0x0), BAR4 msix 16KiB in the file, "
        "BAR0 registers 64KiB, BAR2 memory 128MiB (128MiB at dpa 0x0), BAR4 msix 16KiB for this device)")


def test_same_name_other_pci_ids_is_refused(tmp_path):
    state = poisoned_state_dir(tmp_path, "tiny")
    other = tmp_path / "tiny.toml"
    other.write_text(TINY.replace("device_id = 0x2330", "device_id = 0x2331"))
    with pytest.raises(PoisonFileError) as exc:
        GpuDevice.from_profile(other, state_dir=state)
    assert str(exc.value).endswith("(PCI ids: 10de:2330 subsystem 10de:16c1 rev a1 class 030200 in the file, "
                                   "10de:2331 subsystem 10de:16c1 rev a1 class 030200 for this device)")


def test_a_format_1_file_without_identity_is_refused(tmp_path):
    import struct
    import zlib
    state = tmp_path / "state"
    state.mkdir()
    body = struct.pack("<8sIIQQ", b"HPFNPOIS", 1, 0, 1, 1) + struct.pack("<IIQQ", 2, 0, 0x1000, 0x2000)
    (state / PoisonStore.FILENAME).write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(PoisonFileError) as exc:
        GpuDevice.from_profile("tiny", state_dir=state)
    assert "format 1, written by an older hugepfn without the device it belongs to" in str(exc.value)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_poison_file_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    state = tmp_path / "state"
    state.mkdir()
    target = state / PoisonStore.FILENAME
    if kind == "fifo":
        os.mkfifo(target)
        words = "a FIFO"
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
        words = "a character device"
    else:
        target.mkdir()
        words = "a directory"
    with pytest.raises(PoisonFileError) as exc:
        GpuDevice.from_profile("tiny", state_dir=state)
    assert str(exc.value) == f"{target}: {words}, not a regular file"


def test_serve_with_a_foreign_poison_file_is_one_line_exit_2(tmp_path):
    state = poisoned_state_dir(tmp_path, "tiny")
    os.chmod(tmp_path, 0o700)
    serve = cli("serve", "--profile", "gpu-8g", "--socket", str(tmp_path / "s.sock"), "--backend", "python",
                "--state-dir", str(state))
    assert serve.returncode == 2 and serve.stdout == ""
    assert serve.stderr.splitlines() == [f"hugepfn serve: error: {state / PoisonStore.FILENAME}: poison of another "
                                         "device, not loaded (profile: 'tiny' in the file, 'gpu-8g' for this device)"]
