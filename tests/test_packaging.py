"""The distribution's shape: namespaced packages mapped from top-level folders, one console script."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"abi": "hugepfn.abi", "device": "hugepfn.device", "host": "hugepfn.host", "cli": "hugepfn.cli",
           "testing": "hugepfn.testing", "fixtures": "hugepfn.fixtures", "crosscheck": "hugepfn.crosscheck"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "these are listed but have no __init__.py"


def test_no_generic_top_level_import_names():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert all(name.startswith("hugepfn.") for name in mapping)


def test_console_script_runs_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: hugepfn")


def test_unknown_command_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "no-such-command"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid choice" in proc.stderr


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme_head = (REPO / "README.md").read_text().splitlines()[:12]
    assert any(line.strip() == "make test" for line in readme_head)
    assert "make test" in [line.strip() for line in ci.splitlines()]


def test_progress_bar_stays_off_stdout_and_off_pipes(tmp_path):
    # `hugepfn run` drives a tqdm bar only when stderr is a terminal: piped output is the trace alone.
    repo_demo = REPO / "fixtures" / "scenarios" / "demo.toml"
    proc = subprocess.run([sys.executable, "-m", "hugepfn.cli.main", "run", "--json", str(repo_demo)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.lstrip().startswith("{")
