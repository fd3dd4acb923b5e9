"""docs/scenarios.md documents every key and step kind the parser accepts, and every bundled
scenario: a kind or key added to the parser without its row here fails this test."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hugepfn.host.scenario.runner import load_extensions
from hugepfn.host.scenario.served import SERVE_FIELDS
from hugepfn.host.scenario.spec import BAR_FIELDS, MACHINE_FIELDS, MEM_FIELDS, PROCESS_FIELDS, _device_fields
from hugepfn.host.scenario.steps import STEP_KINDS, SYSCTLS

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "scenarios.md").read_text()
load_extensions()


def table_after(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading``."""
    rest = DOC[DOC.index(heading):]
    rows, started = [], False
    for line in rest.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]          # without the header row


def names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


STEP_ROWS = {kind: row for row in table_after("### Step kinds") for kind in names(row[0])}


@pytest.mark.parametrize("kind", sorted(STEP_KINDS))
def test_every_step_kind_has_a_row_naming_its_fields(kind):
    assert kind in STEP_ROWS, f"docs/scenarios.md: no row for step kind {kind!r}"
    documented = set(re.findall(r"[a-z_0-9]+", STEP_ROWS[kind][1]))
    missing = [f.name for f in STEP_KINDS[kind].fields if f.name not in documented]
    assert missing == [], f"docs/scenarios.md: the {kind!r} row lacks field(s) {missing}"


def test_no_row_for_a_kind_the_parser_does_not_know():
    assert set(STEP_ROWS) <= set(STEP_KINDS)


@pytest.mark.parametrize("heading, fields", [
    ("## The machine", MACHINE_FIELDS), ("### `[[device]]`", _device_fields()),
    ("**`serve = { ... }`**", SERVE_FIELDS), ("### `[[process]]`", PROCESS_FIELDS),
], ids=["machine", "device", "serve", "process"])
def test_every_key_has_a_row(heading, fields):
    documented = set().union(*(names(row[0]) for row in table_after(heading)))
    assert [f.name for f in fields if f.name not in documented] == []


def test_bar_memory_and_sysctl_keys_are_named():
    device_rows = {name: row for row in table_after("### `[[device]]`") for name in names(row[0])}
    for f in BAR_FIELDS:
        assert f.name in device_rows["bars"][1]
    for f in MEM_FIELDS:
        assert f.name in device_rows["usemem"][1]
    assert {f'"{name}"' for name in SYSCTLS} == set().union(*(names(r[0]) for r in table_after("### `[sysctl]`")))


def test_every_bundled_scenario_is_listed():
    listed = set().union(*(names(row[0]) for row in table_after("## Bundled scenarios")))
    assert listed == {p.name for p in (REPO / "fixtures" / "scenarios").glob("*.toml")}


def test_the_profile_table_says_what_each_profile_decides():
    """Each row of the kernel-profile table matches hugepfn.host.kernel.PROFILES, column by column."""
    from hugepfn.host.kernel import PROFILES

    rows = {names(row[0]).pop(): row for row in table_after("What each kernel profile decides")}
    assert list(rows) == list(PROFILES)
    yn = {True: "yes", False: "no"}
    for name, p in PROFILES.items():
        row = rows[name]
        fault = ("whole VMA remapped" if p.vfio_fault == "remap-vma"
                 else "huge, fault page aligned" if p.vfio_alignment == "page" else "huge, aligned down")
        split = {"leaf": "split the leaf", "pmd": "PMD split; PUD oopses"}[p.vma_split_huge]
        assert row[1:] == [fault, yn[p.thp_sysfs_gates_pfnmap], split, yn[p.fault_vma_lock_retry],
                           str(p.nvgrace_generation), yn[p.pfnmap_memory_failure], yn[p.nvgrace_registers_memory],
                           yn[p.pci_reset_warns], yn[p.thp_disable_except_advised]], name
