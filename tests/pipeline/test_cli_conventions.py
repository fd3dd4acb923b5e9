"""The CLI behaves like the tools its users know: --version, lspci's -v levels, `lspci --socket`
on a live served device, the backend description for management tools, and a missing optional
extra as one line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hugepfn.device.sysfs_tree import lspci_path
from hugepfn.host.vfio_user import VfioUserClient
from hugepfn.host.vfio_user.firmware import assign_bar_addresses

from .test_cli import hugepfn, served  # noqa: F401  (served: the `hugepfn serve` fixture)

REPO = Path(__file__).resolve().parents[2]
needs_lspci = pytest.mark.skipif(lspci_path() is None, reason="pciutils (lspci) is not installed")


def test_version_is_the_installed_package_version():
    from importlib.metadata import version
    done = hugepfn("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"hugepfn {version('hugepfn')}\n", "")


@needs_lspci
def test_lspci_verbosity_levels_mean_what_they_mean_to_lspci():
    plain = hugepfn("lspci", "--profile", "gpu-8g")
    assert plain.returncode == 0, plain.stderr
    # no -v: lspci's one line per device (the device's name comes from the machine's pci.ids)
    assert re.fullmatch(r"01:00\.0 3D controller: NVIDIA Corporation .*\(rev a1\)\n", plain.stdout)
    v = hugepfn("lspci", "--profile", "gpu-8g", "-v").stdout
    vv = hugepfn("lspci", "--profile", "gpu-8g", "-vv").stdout
    vvv = hugepfn("lspci", "--profile", "gpu-8g", "-vvv").stdout
    assert "Memory at 20000000000 (64-bit, prefetchable) [size=8G]" in v
    assert "Capabilities: [a0] MSI-X: Enable- Count=32 Masked-" in v
    assert "LnkCap:" not in v and "LnkCap:\tPort #0, Speed 16GT/s, Width x16" in vv
    assert "Region 2: Memory at 20000000000 (64-bit, prefetchable) [size=8G]" in vv
    assert len(plain.stdout) < len(v) < len(vv) <= len(vvv)
    assert hugepfn("lspci", "--profile", "gpu-8g", "-v", "-v").stdout == vv   # counted, as lspci does


@needs_lspci
def test_lspci_socket_decodes_what_a_client_reads_bar_addresses_included(served):  # noqa: F811
    before = hugepfn("lspci", "--socket", str(served), "-v")
    assert before.returncode == 0, before.stderr
    assert "Memory at <ignored> (64-bit, prefetchable) [disabled] [size=64M]" in before.stdout
    with VfioUserClient.attach(served) as client:       # the client's firmware places the BARs
        placed = {p.index: p for p in assign_bar_addresses(client, mmio32_base=0xC000_0000,
                                                          mmio64_base=0x38_0000_0000)}
        after = hugepfn("lspci", "--socket", str(served), "-vv")
    assert after.returncode == 0, after.stderr
    assert placed[2].address == 0x38_0000_0000
    assert f"Region 0: Memory at {placed[0].address:x} (32-bit, non-prefetchable) [size=64K]" in after.stdout
    assert "Region 2: Memory at 3800000000 (64-bit, prefetchable) [size=64M]" in after.stdout
    assert f"Region 4: Memory at {placed[4].address:x} (32-bit, non-prefetchable) [size=16K]" in after.stdout
    assert "Control: I/O- Mem+ BusMaster-" in after.stdout        # firmware turned on Memory Space only


def test_lspci_socket_without_a_server_is_one_line(tmp_path):
    done = hugepfn("lspci", "--socket", str(tmp_path / "gone.sock"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("hugepfn lspci: error: cannot connect to the control socket (No such file or directory); "
                           f"is `hugepfn serve` running?: {tmp_path / 'gone.sock'}.ctl\n")


def test_compare_png_without_matplotlib_names_the_extra(tmp_path):
    # matplotlib really cannot be imported in this child: None in sys.modules makes the import fail
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from hugepfn.cli.main import main\n"
            f"sys.exit(main(['compare', 'fixtures/scenarios/demo.toml', '--png', {str(tmp_path / 'x.png')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("hugepfn compare: error: --png needs matplotlib, which comes with the optional extra "
                           "'plot': pip install 'hugepfn[plot]'\n")
    assert not (tmp_path / "x.png").exists()


def test_backend_json_installs_where_told_and_names_a_runnable_binary(tmp_path):
    shown = hugepfn("backend-json")
    assert shown.returncode == 0, shown.stderr
    description = json.loads(shown.stdout)
    assert description["binary"] == os.path.join(os.path.dirname(sys.executable), "hugepfn-vfio-user")
    assert description["type"] == "gpu" and description["description"].startswith("hugepfn: ")
    target = tmp_path / "share" / "vfio-user"
    done = hugepfn("backend-json", "--install", "--dir", str(target))
    assert done.returncode == 0, done.stderr
    written = target / "50-hugepfn-gpu.json"
    assert done.stdout == f"installed {written} (binary {description['binary']})\n"
    assert json.loads(written.read_text()) == description
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(target) == ["50-hugepfn-gpu.json"]       # no temporary file left behind
    caps = subprocess.run([description["binary"], "--print-capabilities"], capture_output=True, text=True, timeout=60)
    assert caps.returncode == 0 and json.loads(caps.stdout)["type"] == "gpu"


def test_backend_json_default_directory_is_the_conventions_one():
    from hugepfn.cli import backend_json
    assert (backend_json.DEFAULT_DIR, backend_json.FILE_NAME) == ("/usr/share/vfio-user", "50-hugepfn-gpu.json")
