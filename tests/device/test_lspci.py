"""The real pciutils decodes our config space: class, BAR sizes, capabilities, MSI-X count."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hugepfn.device.gpu import GpuDevice
from hugepfn.device.sysfs_tree import lspci_path, run_lspci, write_sysfs_tree

pytestmark = pytest.mark.skipif(lspci_path() is None, reason="pciutils (lspci) is not installed")


def lspci_of(profile, tmp_path, *flags, setup=None):
    with GpuDevice.from_profile(profile) as dev:
        if setup:
            setup(dev)
        write_sysfs_tree(dev, tmp_path)
        return run_lspci(tmp_path, *flags), dev.region_read(7, 0, 4096)


def test_gpu_8g_vvv(tmp_path):
    out, _ = lspci_of("gpu-8g", tmp_path, "-vvv")
    assert out.startswith("01:00.0 3D controller: NVIDIA Corporation")
    assert "(rev a1)" in out.splitlines()[0]
    assert "Region 0: Memory at e0000000 (32-bit, non-prefetchable) [size=16M]" in out
    assert "Region 2: Memory at 20000000000 (64-bit, prefetchable) [size=8G]" in out
    assert "Region 4: Memory at e1000000 (32-bit, non-prefetchable) [size=16K]" in out
    assert "Expansion ROM" not in out
    assert "Control: I/O- Mem+ BusMaster+" in out
    assert "Interrupt: pin A" in out
    assert "Capabilities: [40] Power Management version 3" in out
    assert "Capabilities: [60] Express (v2) Endpoint, MSI 00" in out
    assert "FLReset+" in out
    assert "LnkCap:\tPort #0, Speed 16GT/s, Width x16" in out
    assert "Capabilities: [a0] MSI-X: Enable- Count=32 Masked-" in out
    assert "Vector table: BAR=4 offset=00000000" in out
    assert "PBA: BAR=4 offset=00001000" in out
    assert "Capabilities: [b0] Vendor Specific Information: Len=10" in out
    assert "Capabilities: [100 v2] Advanced Error Reporting" in out
    assert "UESta:\tDLP- SDES- TLP-" in out


def test_msix_enabled_and_masked_shows(tmp_path):
    def enable(dev):
        dev.region_write(7, 0xA2, (0xC000 | 31).to_bytes(2, "little"))
    out, _ = lspci_of("gpu-8g", tmp_path, "-vvv", setup=enable)
    assert "MSI-X: Enable+ Count=32 Masked+" in out


def test_aer_status_bit_decodes(tmp_path):
    def poison_tlp(dev):
        dev.config.set_field(0x104, 4, 1 << 12)
    out, _ = lspci_of("tiny", tmp_path, "-vvv", setup=poison_tlp)
    assert re.search(r"UESta:.*\bTLP\+", out)


@pytest.mark.parametrize("profile, size", [("tiny", "64M"), ("nvgrace", "128G"), ("gpu-1t", "1T")])
def test_large_bar_sizes(tmp_path, profile, size):
    out, _ = lspci_of(profile, tmp_path, "-v")
    assert re.search(rf"Memory at [0-9a-f]+ \(64-bit, prefetchable\) \[size={size}\]", out)


def test_resizable_bar_decodes(tmp_path):
    out, _ = lspci_of("rebar", tmp_path, "-vvv")
    assert "Capabilities: [148 v1] Physical Resizable BAR" in out
    assert "BAR 2: current size: 256MB, supported: 256MB 512MB 1GB 2GB 4GB 8GB 16GB" in out
    assert "[size=256M]" in out


def test_resized_bar_decodes(tmp_path):
    def resize(dev):
        dev.region_write(7, 0x150, (14 << 8).to_bytes(4, "little"))
    out, _ = lspci_of("rebar", tmp_path, "-vvv", setup=resize)
    assert "BAR 2: current size: 16GB" in out and "[size=16G]" in out


def test_hexdump_is_our_config_space(tmp_path):
    out, config = lspci_of("tiny", tmp_path, "-xxxx")
    dumped = bytearray()
    for line in out.splitlines()[1:]:
        if not line.strip():
            continue
        _addr, hexes = line.split(":", 1)
        dumped += bytes.fromhex(hexes)
    assert bytes(dumped) == config


def test_cli_lspci_shows_a_profile():
    # -v as with lspci: BARs and capabilities (without it, one line; test_cli_conventions.py)
    proc = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "lspci", "--profile", "gpu-8g", "-v"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "3D controller" in proc.stdout and "[size=8G]" in proc.stdout
    assert "MSI-X: Enable- Count=32 Masked-" in proc.stdout


@pytest.mark.parametrize("argv, env, message", [
    (["--profile", "no-such"], {}, "hugepfn lspci: error: profile 'no-such': no such profile"),
    (["--profile", "tiny"], {"HUGEPFN_LSPCI": "/nonexistent/lspci"},
     "hugepfn lspci: error: lspci not found: install pciutils"),
])
def test_cli_lspci_errors_are_one_line(argv, env, message):
    proc = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "lspci", *argv],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode != 0
    assert proc.stderr.startswith(message)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
