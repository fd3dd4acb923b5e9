"""The table `make bench` ends with (bench/results.py): rows as recorded, then the load line and
the speed probe's figures in the order they were taken.  Nothing is timed here."""
from __future__ import annotations

import re

import pytest

from bench import results


@pytest.fixture
def rows():
    saved = list(results.ROWS)
    results.ROWS.clear()
    yield results.ROWS
    results.ROWS[:] = saved


def test_rows_come_out_as_recorded_with_their_verdicts(rows):
    results.record("a measure", "1.0 us", "<= 2 us", True)
    results.record("another", "3 ms", "< 1 ms", False)
    results.record("a reference", "5 us", "(no target)", None)
    assert results.table() == "\n".join([
        "| measure | figure | target | met |",
        "|---|---:|---|---|",
        "| a measure | 1.0 us | <= 2 us | yes |",
        "| another | 3 ms | < 1 ms | NOT MET |",
        "| a reference | 5 us | (no target) | n/a |",
    ])


def test_the_load_line_ends_with_each_speed_probe_in_turn(rows):
    load = results.LoadMeter()
    first = load.probe("device")
    last = load.probe("end")
    assert first > 0 and last > 0
    head, probe_line = results.table(load).split("\n")[-2:]
    assert re.fullmatch(r"machine load during the run \(\d+ s, \d+ CPUs\): load average \d+\.\d\d at the start, "
                        r"\d+\.\d\d at the end; CPUs busy \d+ % \(\d+ % this benchmark, \d+ % other processes\)", head)
    assert probe_line == (f"speed probe (a fixed Python loop, best of 5; lower is faster): device {first:.2f} ms, "
                          f"end {last:.2f} ms")
