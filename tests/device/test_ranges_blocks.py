"""RangeSet's block structure: with tiny blocks every change splits, joins or empties blocks, and
the set must still equal a plain bitmap of bytes (same ranges, queries, removed counts)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugepfn.device import ranges as ranges_mod
from hugepfn.device.ranges import RangeSet


def _runs(bits: set[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for b in sorted(bits):
        if out and out[-1][1] == b:
            out[-1][1] = b + 1
        else:
            out.append([b, b + 1])
    return [tuple(r) for r in out]


@pytest.fixture(params=[2, 4])
def tiny_blocks(request, monkeypatch):
    # the patched LOAD holds for every example hypothesis generates in the test
    monkeypatch.setattr(ranges_mod, "LOAD", request.param)
    return request.param


op = st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 300), st.integers(1, 40))


@given(ops=st.lists(op, max_size=80), probes=st.lists(st.tuples(st.integers(0, 350), st.integers(1, 60)), max_size=10),
       bulk=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 30)), max_size=30))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tiny_blocks_against_a_bitmap(tiny_blocks, ops, probes, bulk):
    rs = RangeSet((s, s + n) for s, n in bulk)
    bits = {b for s, n in bulk for b in range(s, s + n)}
    for kind, start, length in ops:
        if kind == "add":
            rs.add(start, start + length)
            bits.update(range(start, start + length))
        else:
            gone = bits.intersection(range(start, start + length))
            assert rs.remove(start, start + length) == len(gone)
            bits -= gone
        for block in rs._blocks:
            assert block and len(block) % 2 == 0 and len(block) <= 2 * tiny_blocks
        assert rs._lasts == [block[-1] for block in rs._blocks]
    assert list(rs) == _runs(bits) and len(rs) == len(_runs(bits))
    for a, n in probes:
        hit = sorted(bits.intersection(range(a, a + n)))
        assert rs.overlaps(a, a + n) == bool(hit)
        assert rs.first_in(a, a + n) == (hit[0] if hit else None)
        assert sum(e - s for s, e in rs.within(a, a + n)) == len(hit)


def test_bulk_update_merges_with_what_is_there(tiny_blocks):
    rs = RangeSet([(0, 10), (20, 30), (40, 50)])
    rs.update([(10, 20), (45, 60), (70, 80), (75, 76), (90, 90)])
    assert list(rs) == [(0, 30), (40, 60), (70, 80)]
    assert rs == RangeSet([(70, 80), (0, 30), (40, 60)])
    rs.clear()
    assert not rs and list(rs) == [] and not rs.overlaps(0, 100) and rs.remove(0, 100) == 0
