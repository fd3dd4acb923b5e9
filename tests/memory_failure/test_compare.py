"""`hugepfn compare`: one scenario under the three policies, side by side, with a PNG."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hugepfn.fixtures import SCENARIOS
from hugepfn.host.memory_failure.compare import run_all_policies
from hugepfn.host.memory_failure.summary import format_bytes

REPO = Path(__file__).resolve().parents[2]
SPLIT = REPO / "fixtures" / "scenarios" / "poison-split.toml"


def hugepfn(*args):
    return subprocess.run([sys.executable, "-m", "hugepfn.cli.main", *args], capture_output=True, text=True, cwd=REPO)


def test_summaries_per_policy():
    runs = {r.policy: r.summary for r in run_all_policies(SPLIT)}
    assert list(runs) == ["upstream", "hard-offline", "split"]
    up, ho, sp = runs["upstream"], runs["hard-offline"], runs["split"]
    assert (up["pud"], up["pmd"], up["pte"], up["unreachable_bytes"], up["refused_bytes"]) == (1, 0, 0, 0, 0)
    # hard-offline: the PUD went (1 GiB), then the second report zapped the PTE refaulted meanwhile
    assert (ho["pud"], ho["pmd"], ho["pte"], ho["unreachable_bytes"], ho["refused_bytes"]) == (0, 1, 0, (1 << 30) + 4096,
                                                                                             8192)
    assert (sp["pud"], sp["pmd"], sp["pte"], sp["unreachable_bytes"], sp["refused_bytes"]) == (0, 511, 510, 8192, 8192)
    assert sp["faults"] == 2 and ho["faults"] == 4
    assert up["signal_kinds"] == {"SIGBUS BUS_MCEERR_AR": 3}


def test_cli_table_and_png(tmp_path):
    png = tmp_path / "cmp.png"
    out = hugepfn("compare", str(SPLIT), "--png", str(png))
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["policy", "upstream", "hard-offline", "split"]
    assert "bytes unreachable (blast radius)" in out.stdout
    row = next(line for line in lines if line.startswith("bytes unreachable"))
    assert row.split()[-6:] == ["0", "B", "1.00", "GiB", "8", "KiB"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert lines[-1] == f"picture: {png}"


def test_cli_user_errors():
    out = hugepfn("compare", "no-such.toml")
    assert out.returncode == 2 and out.stderr == ("hugepfn compare: error: no scenario file or bundled scenario "
                                                  "'no-such.toml' (`hugepfn scenarios` lists the "
                                                  f"{len(list(SCENARIOS.glob('*.toml')))} bundled ones)\n")
    out = hugepfn("compare", str(SPLIT), "--png", "x.jpg")
    assert out.returncode == 2 and out.stderr.strip() == "hugepfn compare: error: --png: the file name must end in .png, got 'x.jpg'"


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 4096, 1 << 30, (1 << 30) + 8192, 3 << 20)] == [
        "0 B", "4 KiB", "1 GiB", "1.00 GiB", "3 MiB"]


def test_cli_json():
    import json
    out = hugepfn("compare", str(SPLIT), "--json")
    assert out.returncode == 0 and out.stderr == ""
    data = json.loads(out.stdout)
    assert list(data) == ["upstream", "hard-offline", "split"]
    assert data["split"]["unreachable_bytes"] == 8192 and data["split"]["faults"] == 2
    assert data["hard-offline"]["signal_kinds"] == {"SIGBUS BUS_MCEERR_AR": 3}
