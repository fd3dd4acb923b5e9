"""PoisonSet (a 64-bit roaring bitmap): queries with bounds outside 0 .. 2**64 - 1 or empty
ranges answer as a set of pfns would, never with an error from the bitmap."""
from hugepfn.host.memory_failure.poison_set import PoisonSet


def test_bounds_and_empty_ranges():
    ps = PoisonSet(x for x in (9, 3, 5))
    assert list(ps) == [3, 5, 9] and len(ps) == 3 and ps
    assert ps.any_in(-5, 4) and not ps.any_in(-5, -1) and not ps.any_in(10, 1 << 70) and ps.any_in(9, 1 << 70)
    assert not ps.any_in(5, 5) and not ps.any_in(6, 3)
    assert ps.first_in(-3, 100) == 3 and ps.first_in(6, 9) is None and ps.first_in(6, 10) == 9
    assert ps.in_range(-1, 1 << 80) == [3, 5, 9] and ps.in_range(4, 9) == [5] and ps.in_range(9, 4) == []
    assert -1 not in ps and (1 << 70) not in ps and 5 in ps
    assert ps.add(5) is False and ps.add(6) is True and ps.discard(7) is False and ps.discard(6) is True
    assert not PoisonSet()
