"""The poison model: range set, injection granularity, DPA addressing, copy_mc reads, repair, pfn view."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hugepfn.device.gpu import GpuDevice, PoisonedReadError
from hugepfn.device.poison import PoisonError
from hugepfn.device.ranges import RangeSet

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class TestRangeSet:
    def test_add_merges_overlapping_and_touching(self):
        rs = RangeSet()
        rs.add(100, 200)
        rs.add(300, 400)
        rs.add(200, 300)                 # touches both: one range
        assert list(rs) == [(100, 400)]
        rs.add(50, 60)
        rs.add(55, 120)
        assert list(rs) == [(50, 400)]

    def test_remove_splits(self):
        rs = RangeSet([(0, 1000)])
        assert rs.remove(100, 200) == 100
        assert list(rs) == [(0, 100), (200, 1000)]
        assert rs.remove(50, 250) == 100
        assert list(rs) == [(0, 50), (250, 1000)]
        assert rs.remove(2000, 3000) == 0

    def test_queries(self):
        rs = RangeSet([(64, 128), (4096, 4160)])
        assert rs.overlaps(0, 65) and not rs.overlaps(0, 64) and not rs.overlaps(128, 4096)
        assert rs.first_in(0, 10000) == 64 and rs.first_in(100, 10000) == 100
        assert rs.first_in(128, 4097) == 4096 and rs.first_in(128, 4096) is None
        assert list(rs.within(100, 4100)) == [(100, 128), (4096, 4100)]

    def test_pages(self):
        rs = RangeSet([(64, 128), (4000, 4200), (3 * 4096, 5 * 4096 + 1)])
        assert list(rs.pages()) == [0, 1, 3, 4, 5]
        assert list(rs.pages(21)) == [0]

    @given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 500), st.integers(1, 80)), max_size=40),
           probe=st.tuples(st.integers(0, 600), st.integers(1, 100)))
    @settings(max_examples=200, deadline=None)
    def test_against_a_bitmap(self, ops, probe):
        rs, bits = RangeSet(), set()
        for add, start, length in ops:
            if add:
                rs.add(start, start + length)
                bits.update(range(start, start + length))
            else:
                rs.remove(start, start + length)
                bits.difference_update(range(start, start + length))
        expected = []
        for b in sorted(bits):
            if expected and expected[-1][1] == b:
                expected[-1][1] = b + 1
            else:
                expected.append([b, b + 1])
        assert list(rs) == [tuple(e) for e in expected]
        a, n = probe
        hit = sorted(bits.intersection(range(a, a + n)))
        assert rs.overlaps(a, a + n) == bool(hit)
        assert rs.first_in(a, a + n) == (hit[0] if hit else None)

    def test_bulk_update_equals_adds(self):
        ranges = [(i * 192, i * 192 + 64) for i in range(1000)] + [(64, 200)]
        a, b = RangeSet(ranges), RangeSet()
        for s, e in ranges:
            b.add(s, e)
        assert a == b


class TestInjection:
    @pytest.mark.parametrize("granularity", [64, 128, 4 * KiB, 2 * MiB, 32 * MiB])
    def test_granularity_is_an_aligned_block(self, tiny, granularity):
        offset = 5 * MiB + 3 * KiB + 17
        event = tiny.poison.inject(bar=2, offset=offset, granularity=granularity)
        start = offset & ~(granularity - 1)
        assert (event.offset, event.length) == (start, granularity)
        assert list(tiny.poison.ranges(2)) == [(start, start + granularity)]
        assert tiny.poison.is_poisoned(2, start, 1) and tiny.poison.is_poisoned(2, start + granularity - 1, 1)
        assert not tiny.poison.is_poisoned(2, start + granularity, 4096)
        assert not start or not tiny.poison.is_poisoned(2, 0, start)

    def test_one_gib_granularity_clips_to_memory(self, tiny):
        event = tiny.poison.inject(bar=2, offset=12345, granularity=GiB)
        assert (event.offset, event.length) == (0, 64 * MiB)
        rec = tiny.queued_errors()[0]
        assert rec.granularity == GiB and rec.length == 64 * MiB

    @pytest.mark.parametrize("kwargs, message", [
        (dict(bar=2, offset=0, granularity=32), "granularity"),
        (dict(bar=2, offset=0, granularity=3 * 64), "granularity"),
        (dict(bar=2, offset=0, granularity=2 * GiB), "granularity"),
        (dict(bar=0, offset=0), "not a memory BAR"),
        (dict(bar=2, offset=64 * MiB), "outside"),
        (dict(dpa=1 << 40), "not in any memory BAR"),
        (dict(bar=2), "either"),
        (dict(bar=2, offset=0, dpa=0), "either"),
    ])
    def test_bad_injection_is_one_line_error(self, tiny, kwargs, message):
        with pytest.raises(PoisonError) as exc:
            tiny.poison.inject(**kwargs)
        assert message in str(exc.value) and "\n" not in str(exc.value)
        assert len(tiny.poison) == 0 and tiny.queued_errors() == []

    def test_by_device_physical_address(self):
        with GpuDevice.from_profile("nvgrace") as dev:
            base = 0x4000_0000_0000
            event = dev.poison.inject(dpa=base + 96 * GiB + 0x1234, granularity=4 * KiB)
            assert (event.bar, event.offset, event.dpa) == (2, 96 * GiB + 0x1000, base + 96 * GiB + 0x1000)
            rec = dev.queued_errors()[0]
            assert rec.physical_addr == base + 96 * GiB + 0x1000
            assert rec.physical_addr_mask == ~(4 * KiB - 1) & (1 << 64) - 1
            assert dev.poison.dpa_to_bar(base) == (2, 0)
            assert dev.poison.bar_to_dpa(2, 0x40) == base + 0x40

    def test_default_dpa_base_is_zero_for_the_first_memory_bar(self, tiny):
        event = tiny.poison.inject(bar=2, offset=0x1000)
        assert event.dpa == 0x1000
        assert tiny.queued_errors()[0].physical_addr == 0x1000

    def test_record_carries_dram_coordinates_for_a_cacheline(self, tiny):
        tiny.poison.inject(bar=2, offset=0x12345 * 64)
        rec = tiny.queued_errors()[0]
        dpa = 0x12345 * 64
        assert (rec.column, rec.bank, rec.row) == ((dpa >> 6) & 0x1F, (dpa >> 11) & 0xF, (dpa >> 15) & 0xFFFF)

    def test_pfn_views(self):
        with GpuDevice.from_profile("nvgrace") as dev:
            dev.poison.inject(bar=2, offset=0x3040)
            dev.poison.inject(bar=2, offset=0x3080)                 # same page
            dev.poison.inject(bar=2, offset=2 * MiB, granularity=2 * MiB)
            assert list(dev.poison.poisoned_pages(2)) == [3] + list(range(512, 1024))
            pfns = list(dev.poison.poisoned_pfns())
            assert pfns[0] == (0x4000_0000_0000 >> 12) + 3 and len(pfns) == 513
            assert list(dev.poison.poisoned_pages(2, page_shift=21)) == [0, 1]
            items = list(dev.poison)
            assert [(p.offset, p.length) for p in items] == [(0x3040, 128), (2 * MiB, 2 * MiB)]


class TestCopyMc:
    def test_read_stops_at_first_poisoned_byte(self, tiny):
        tiny.region_write(2, 0, bytes(range(256)) * 16)
        tiny.poison.inject(bar=2, offset=0x140)
        data, bad = tiny.region_read_mc(2, 0x100, 0x100)
        assert bad == 0x140 and data == (bytes(range(256)) * 16)[0x100:0x140]
        with pytest.raises(PoisonedReadError) as exc:
            tiny.region_read(2, 0x100, 0x100)
        err = exc.value
        assert err.errno == errno.EIO and err.short_count == 0x40 and err.bad_offset == 0x140
        assert err.partial == data
        assert isinstance(err, OSError)

    def test_read_starting_in_poison_returns_nothing(self, tiny):
        tiny.poison.inject(bar=2, offset=0)
        assert tiny.region_read_mc(2, 0x10, 8) == (b"", 0x10)

    def test_clean_read_is_whole(self, tiny):
        tiny.poison.inject(bar=2, offset=0x1000)
        assert tiny.region_read_mc(2, 0, 0x1000) == (bytes(0x1000), None)
        assert tiny.region_read(2, 0x1040, 64) == bytes(64)

    def test_write_without_repair_keeps_poison(self, tiny):
        tiny.poison.inject(bar=2, offset=0)
        tiny.region_write(2, 0, b"x" * 64)
        assert tiny.poison.is_poisoned(2, 0, 64)


class TestRepair:
    @pytest.fixture
    def dev(self):
        with GpuDevice.from_profile("rebar") as dev:
            yield dev

    def test_write_repairs_only_fully_covered_cachelines(self, dev):
        assert dev.profile.repair_by_write
        dev.poison.inject(bar=2, offset=0, granularity=256)         # 4 cachelines
        dev.region_write(2, 0x40, b"y" * 0x40)                      # exactly line 1
        dev.region_write(2, 0x90, b"y" * 0x20)                      # part of line 2: no repair
        assert list(dev.poison.ranges(2)) == [(0, 0x40), (0x80, 0x100)]
        assert dev.region_read(2, 0x40, 0x40) == b"y" * 0x40

    def test_explicit_repair_widens_to_cachelines(self, tiny):
        tiny.poison.inject(bar=2, offset=0, granularity=4096)
        assert tiny.poison.repair(2, 0x41, 1) == 64
        assert list(tiny.poison.ranges(2)) == [(0, 0x40), (0x80, 0x1000)]
        tiny.poison.clear()
        assert len(tiny.poison) == 0
