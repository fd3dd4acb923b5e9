"""Tests of the e2e helper scripts that run without root or a guest.

They are part of `make test` (pytest's testpaths are tests/ and e2e/); the guest itself is
exercised by `make e2e` only.
"""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hugepfn.crosscheck import mirror as apt_mirror  # noqa: E402
import mkinitramfs  # noqa: E402


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_picks_archive_and_skips_security_and_third_party(tmp_path):
    write(tmp_path / "sources.list.d" / "a-nodesource.sources",
          "Types: deb\nURIs: https://deb.example.invalid/node_20.x\nSuites: nodistro\nComponents: main\n")
    write(tmp_path / "sources.list.d" / "debian.sources",
          "Types: deb\n# http://snapshot.example.invalid/archive\nURIs: http://mirror.example.invalid/debian\n"
          "Suites: bookworm bookworm-updates\nComponents: main\n\n"
          "Types: deb\nURIs: http://mirror.example.invalid/debian-security\n"
          "Suites: bookworm-security\nComponents: main\n")
    assert list(apt_mirror.candidate_uris(str(tmp_path))) == ["http://mirror.example.invalid/debian"]


def test_one_line_format_with_options_and_disabled_deb822(tmp_path):
    write(tmp_path / "sources.list",
          "# deb http://old.example.invalid/debian buster main\n"
          "deb-src http://src.example.invalid/debian trixie main\n"
          "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example.invalid/debian/ trixie main\n")
    write(tmp_path / "sources.list.d" / "off.sources",
          "Enabled: no\nTypes: deb\nURIs: http://off.example.invalid/debian\nSuites: trixie\n")
    assert list(apt_mirror.candidate_uris(str(tmp_path))) == ["http://one.example.invalid/debian"]


@pytest.mark.parametrize("suite, debian", [
    ("trixie", True), ("bookworm-updates", True), ("sid", True), ("stable", True),
    ("trixie-security", False), ("bullseye/updates", False), ("nodistro", False), ("jammy", False),
])
def test_suite_classification(suite, debian):
    assert apt_mirror.suite_is_debian_archive(suite) is debian


def test_no_source_is_one_line_and_status_1(tmp_path):
    done = subprocess.run([sys.executable, str(HERE / "apt_mirror.py"), str(tmp_path)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("e2e: no Debian archive URI found")


def test_override_wins(tmp_path):
    done = subprocess.run([sys.executable, str(HERE / "apt_mirror.py"), str(tmp_path)],
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HUGEPFN_E2E_MIRROR": "http://m.example.invalid/d/"})
    assert (done.returncode, done.stdout) == (0, "http://m.example.invalid/d\n")


def parse_newc(blob: bytes) -> dict[str, tuple[int, bytes]]:
    """An independent reader of the newc layout: name -> (mode, data)."""
    entries, pos = {}, 0
    while True:
        header = blob[pos:pos + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        assert blob[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        data = blob[data_start:data_start + filesize]
        pos = (data_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(blob)
            return entries
        entries[name] = (mode, data)


def test_initramfs_layout(tmp_path):
    busybox, init, out = tmp_path / "bb", tmp_path / "init", tmp_path / "out.gz"
    busybox.write_bytes(b"\x7fELF" + bytes(range(256)) * 3)
    init.write_text("#!/bin/busybox sh\necho hi\n")
    status = mkinitramfs.main([str(out), "--busybox", str(busybox), "--init", str(init),
                               "--set", "VENDOR_ID=0x10de", "--set", "NOTE=it's spaced"])
    assert status == 0
    entries = parse_newc(gzip.decompress(out.read_bytes()))
    assert entries["bin/busybox"] == (0o100755, busybox.read_bytes())
    assert entries["init"] == (0o100755, init.read_bytes())
    assert entries["dev"][0] == 0o040755
    conf = entries["etc/e2e.conf"][1].decode()
    assert "VENDOR_ID=0x10de\n" in conf
    assert "NOTE='it'\"'\"'s spaced'\n" in conf
    # the shell reads back exactly what was set
    shown = subprocess.run(["sh", "-c", '. "$1"; printf "%s|%s" "$VENDOR_ID" "$NOTE"', "sh", "/dev/stdin"],
                           input=conf, capture_output=True, text=True)
    assert shown.stdout == "0x10de|it's spaced"


def test_initramfs_bad_key_is_one_line(tmp_path, capsys):
    (tmp_path / "x").write_bytes(b"x")
    status = mkinitramfs.main([str(tmp_path / "o"), "--busybox", str(tmp_path / "x"),
                               "--init", str(tmp_path / "x"), "--set", "lower=1"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "upper-case shell name" in err


def test_guest_facts_match_the_device_model():
    import struct

    import device_facts
    from hugepfn.abi.cper import build_record
    from hugepfn.device.gpu import GpuDevice

    facts = device_facts.guest_facts("gpu-8g")
    # identity register: what the device itself returns at ID_OFFSET of its register BAR
    with GpuDevice.from_profile("gpu-8g") as dev:
        raw = dev.region_read(int(facts["REG_BAR"]), int(facts["ID_OFFSET"], 16), 4)
        assert struct.unpack("<I", raw)[0] == int(facts["ID_VALUE"], 16)
        count = dev.region_read(0, int(facts["ERRQ_COUNT_OFFSET"], 16), 4)
        assert struct.unpack("<I", count)[0] == 0
        event = dev.poison.inject(bar=int(facts["POISON_BAR"]), offset=int(facts["POISON_OFFSET"], 16),
                                  granularity=int(facts["POISON_GRANULARITY"]))
        assert struct.unpack("<I", dev.region_read(0, int(facts["ERRQ_COUNT_OFFSET"], 16), 4))[0] == 1
        window = dev.region_read(0, int(facts["ERRQ_WINDOW_OFFSET"], 16), int(facts["RECORD_SIZE"]))
    # the guest reads these two fields by offset; they must be where the record keeps them
    assert struct.unpack_from("<I", window, int(facts["RECORD_BAR_FIELD"]))[0] == event.bar
    assert struct.unpack_from("<Q", window, int(facts["RECORD_OFFSET_FIELD"]))[0] == event.offset
    want = device_facts.expected_record("gpu-8g")
    assert (want.bar, want.bar_offset, want.length, want.physical_addr) == \
        (event.bar, event.offset, event.length, event.dpa)
    record = build_record(sequence=1, bar=2, bar_offset=0x5000, length=4096, dpa=0x5000, granularity=4096)
    assert struct.unpack_from("<Q", record, int(facts["RECORD_OFFSET_FIELD"]))[0] == 0x5000
    assert facts["VENDOR_ID"] == "0x10de" and facts["DEVICE_ID"] == "0x2331"


def test_whole_bar_facts_of_the_huge_profiles():
    import device_facts
    gpu_1t, nvgrace = device_facts.guest_facts("gpu-1t"), device_facts.guest_facts("nvgrace")
    assert (gpu_1t["DATA_BAR_SIZE"], gpu_1t["DATA_MEMORY_SIZE"]) == ("0x10000000000", "0x10000000000")
    # nvgrace: 96 GiB + 6 MiB of memory behind a 128 GiB BAR
    assert (nvgrace["DATA_BAR_SIZE"], nvgrace["DATA_MEMORY_SIZE"]) == ("0x2000000000", "0x1800600000")


def test_qemu_command_line_of_a_run():
    import run_guest
    argv = run_guest.qemu_argv("/boot/vmlinuz", "/run/hugepfn-e2e/initramfs.gz", "tcg", 512,
                               "/run/hugepfn-e2e/gpu.sock", cpu="max,phys-bits=41")
    assert argv[argv.index("-cpu") + 1] == "max,phys-bits=41"
    assert argv[-2:] == ["-device", '{"driver":"vfio-user-pci","socket":{"path":"/run/hugepfn-e2e/gpu.sock",'
                                    '"type":"unix"}}']
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in argv


def test_a_failure_is_reported_once_and_what_it_stopped_is_not_reached(capsys):
    import run_guest
    report = run_guest.Report()
    report.record(True, "boot", "ok")
    report.record(False, "bars", "BAR2 at 0")
    report.missing(["boot", "bars", "identity", "placement"], guest_gave_up=True)
    assert report.failed == ["bars"] and report.not_reached == ["identity", "placement"]
    assert capsys.readouterr().out.splitlines() == [
        "PASS boot: ok", "FAIL bars: BAR2 at 0",
        "NOT-REACHED identity, placement: the run stopped after FAIL bars"]
    silent = run_guest.Report()       # no reported failure: a missing check is a failure itself
    silent.missing(["identity"], guest_gave_up=True)
    assert silent.failed == ["identity"] and silent.not_reached == []
