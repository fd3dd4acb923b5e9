"""PageTable.copy_range (fork's copy_page_range) and move_range (mremap's move_page_tables):
which leaves and tables end where, exactly."""
from __future__ import annotations

import random

import pytest

from hugepfn.host.mm import PMD_SIZE, PUD_SIZE, Leaf, PageTable

BASE = 0x7f0000000000          # 1 GiB aligned
PAGE = 0x1000


def populated() -> PageTable:
    """A PUD leaf, a PMD table with a PMD leaf and two PTE tables (one partly filled, one linear),
    and an empty PTE table."""
    pt = PageTable()
    pt.set_pud(BASE, 0x100000)
    pt.set_pmd(BASE + PUD_SIZE, 0x200000)
    pt.set_pte(BASE + PUD_SIZE + PMD_SIZE + 3 * PAGE, 0x300003)
    pt.set_pte(BASE + PUD_SIZE + PMD_SIZE + 7 * PAGE, 0x300007)
    pt.set_pte_range(BASE + PUD_SIZE + 2 * PMD_SIZE, BASE + PUD_SIZE + 3 * PMD_SIZE, 0x400000)
    pt.pte_alloc(BASE + PUD_SIZE + 4 * PMD_SIZE)
    return pt


def test_copy_range_copies_every_leaf_and_table_as_is():
    src, dst = populated(), PageTable()
    src.copy_range(dst, BASE, BASE + 2 * PUD_SIZE)
    assert list(dst.leaves()) == list(src.leaves())
    assert dst.counts() == src.counts() == (1, 1, 2 + 512)
    assert dst.nr_tables() == src.nr_tables() == (1, 3)       # the empty PTE table is copied too
    assert dst.slot_state(BASE + PUD_SIZE + 4 * PMD_SIZE, "pmd") == "table"
    # the copy is independent of the source
    src.zap_range(BASE, BASE + 2 * PUD_SIZE)
    assert dst.lookup(BASE + PUD_SIZE + 2 * PMD_SIZE + 5 * PAGE) == Leaf("pte", BASE + PUD_SIZE + 2 * PMD_SIZE + 5 * PAGE,
                                                                         0x400005)
    assert src.counts() == (0, 0, 0)


def test_copy_range_takes_only_the_range_of_a_pte_table():
    src, dst = populated(), PageTable()
    start = BASE + PUD_SIZE + PMD_SIZE + 5 * PAGE
    src.copy_range(dst, start, BASE + PUD_SIZE + 2 * PMD_SIZE + 2 * PAGE)
    assert [(l.va, l.pfn) for l in dst.leaves()] == [(BASE + PUD_SIZE + PMD_SIZE + 7 * PAGE, 0x300007),
                                                    (BASE + PUD_SIZE + 2 * PMD_SIZE, 0x400000),
                                                    (BASE + PUD_SIZE + 2 * PMD_SIZE + PAGE, 0x400001)]


@pytest.mark.parametrize("start, end", [(BASE + PAGE, BASE + PUD_SIZE), (BASE + PUD_SIZE, BASE + PUD_SIZE + PAGE)])
def test_copy_range_refuses_a_huge_leaf_it_only_partly_covers(start, end):
    with pytest.raises(ValueError, match="straddles"):
        populated().copy_range(PageTable(), start, end)


def test_move_whole_tables_and_huge_leaves_when_aligned():
    pt = populated()
    want = [(l.level, l.va + 8 * PUD_SIZE, l.pfn) for l in pt.leaves()]
    pt.move_range(BASE, BASE + 8 * PUD_SIZE, 2 * PUD_SIZE)
    assert [tuple(l) for l in pt.leaves()] == want
    # the PMD table moved as one pointer (move_normal_pud): nothing is left at the source
    assert pt.nr_tables() == (1, 3) and pt.slot_state(BASE + PUD_SIZE, "pud") == "none"
    assert pt.slot_state(BASE + 9 * PUD_SIZE + 4 * PMD_SIZE, "pmd") == "table"


def test_move_pmd_aligned_moves_pte_tables_whole_and_leaves_source_pmd_table():
    pt = populated()
    old = BASE + PUD_SIZE + PMD_SIZE
    new = BASE + 5 * PUD_SIZE + 7 * PMD_SIZE
    pt.move_range(old, new, 2 * PMD_SIZE)
    assert [(l.va, l.pfn) for l in pt.leaves(new, new + 2 * PMD_SIZE)][:3] == [
        (new + 3 * PAGE, 0x300003), (new + 7 * PAGE, 0x300007), (new + PMD_SIZE, 0x400000)]
    assert pt.counts() == (1, 1, 514)
    assert pt.slot_state(old, "pmd") == "none" and pt.slot_state(old + PMD_SIZE, "pmd") == "none"
    assert pt.slot_state(old, "pud") == "table"             # the source PMD table stays


def test_move_misaligned_moves_ptes_one_by_one():
    pt = populated()
    old = BASE + PUD_SIZE + PMD_SIZE
    new = BASE + 3 * PUD_SIZE + 0x10000
    pt.move_range(old, new, PMD_SIZE)
    assert [(l.va, l.pfn) for l in pt.leaves(new, new + PMD_SIZE)] == [(new + 3 * PAGE, 0x300003),
                                                                      (new + 7 * PAGE, 0x300007)]
    # the emptied source PTE table stays (free_pgtables frees it with the old VMA)
    assert pt.slot_state(old, "pmd") == "table" and pt.lookup(old + 3 * PAGE) is None


@pytest.mark.parametrize("old, new, length", [
    (BASE, BASE + 5 * PUD_SIZE + PMD_SIZE, PUD_SIZE),                  # PUD leaf, new end misaligned
    (BASE + PUD_SIZE, BASE + 5 * PUD_SIZE + PAGE, PMD_SIZE),            # PMD leaf, new end misaligned
])
def test_move_refuses_a_huge_leaf_that_cannot_move_whole(old, new, length):
    with pytest.raises(ValueError, match="split it first"):
        populated().move_range(old, new, length)


def test_move_down_overlapping_and_random_moves_keep_every_pfn():
    rng = random.Random(7)
    pt = PageTable()
    pages = sorted(rng.sample(range(3 * 512), 200))
    for p in pages:
        pt.set_pte(BASE + p * PAGE, 0x9000 + p)
    pt.move_range(BASE, BASE - 5 * PAGE, 3 * PMD_SIZE)                 # overlapping, moving down
    assert [(l.va, l.pfn) for l in pt.leaves()] == [(BASE + (p - 5) * PAGE, 0x9000 + p) for p in pages]
    with pytest.raises(ValueError, match="overlapping"):
        pt.move_range(BASE, BASE + PAGE, PMD_SIZE)
