"""Memory BARs: sparse memfds, region info honest to vfio-user, reads past real memory, mmap view."""
from __future__ import annotations

import errno
import mmap
import os

import pytest

from hugepfn.abi import vfio
from hugepfn.device.gpu import GpuDevice
from hugepfn.device.interface import SparseArea

GiB, MiB = 1 << 30, 1 << 20
MMAP_FLAGS = (vfio.VFIO_REGION_INFO_FLAG_READ | vfio.VFIO_REGION_INFO_FLAG_WRITE
              | vfio.VFIO_REGION_INFO_FLAG_MMAP | vfio.VFIO_REGION_INFO_FLAG_CAPS)


def test_region_info_table(tiny):
    rw = vfio.VFIO_REGION_INFO_FLAG_READ | vfio.VFIO_REGION_INFO_FLAG_WRITE
    infos = [tiny.region_info(i) for i in range(9)]
    assert [(i.size, i.flags) for i in infos] == [
        (64 * 1024, rw), (0, 0), (64 * MiB, MMAP_FLAGS), (0, 0), (16 * 1024, rw), (0, 0),
        (0, 0), (4096, rw), (0, 0)]
    bar2 = infos[2]
    assert bar2.fd is not None and bar2.fd_offset == 0 and bar2.is_64bit and bar2.prefetchable
    assert bar2.sparse_areas == (SparseArea(0, 64 * MiB),)
    assert infos[0].fd is None and infos[4].fd is None        # trapped registers never in an fd
    with pytest.raises(OSError) as exc:
        tiny.region_info(9)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("index", [1, 3, 5, 6, 8])
def test_absent_regions_refuse_access(tiny, index):
    with pytest.raises(OSError) as exc:
        tiny.region_read(index, 0, 4)
    assert exc.value.errno == errno.EINVAL


def test_gpu_8g_is_sparse():
    with GpuDevice.from_profile("gpu-8g") as dev:
        bar = dev.memory[2]
        assert os.fstat(bar.fd).st_size == 8 * GiB
        assert bar.resident_bytes() == 0
        dev.region_write(2, 7 * GiB, b"z" * 4096)
        assert bar.resident_bytes() == 4096
        assert dev.region_read(2, 7 * GiB, 4) == b"zzzz"


def test_one_tib_bar_can_be_created_and_touched_at_its_end():
    with GpuDevice.from_profile("gpu-1t") as dev:
        assert dev.region_info(2).size == 1 << 40
        dev.region_write(2, (1 << 40) - 8, b"lastbyte")
        assert dev.region_read(2, (1 << 40) - 8, 8) == b"lastbyte"
        assert dev.memory[2].resident_bytes() == 4096


def test_nvgrace_window_is_pow2_and_past_memory_reads_all_ones():
    with GpuDevice.from_profile("nvgrace") as dev:
        mem = 96 * GiB + 6 * MiB
        info = dev.region_info(2)
        assert info.size == 128 * GiB
        assert info.sparse_areas == (SparseArea(0, mem),)
        assert os.fstat(info.fd).st_size == mem
        dev.region_write(2, mem - 4, b"abcd")
        assert dev.region_read(2, mem - 4, 8) == b"abcd" + b"\xff" * 4     # straddles the end
        dev.region_write(2, mem + 4096, b"lost")                             # dropped
        assert dev.region_read(2, mem + 4096, 4) == b"\xff" * 4
        assert dev.region_read(2, 128 * GiB - 4, 4) == b"\xff" * 4
        with pytest.raises(OSError):
            dev.region_read(2, 128 * GiB - 4, 8)


def test_mmap_of_the_fd_sees_region_writes(tiny):
    info = tiny.region_info(2)
    area = info.sparse_areas[0]
    with mmap.mmap(info.fd, area.size, offset=info.fd_offset + area.offset) as m:
        tiny.region_write(2, 0x2000, b"via region_write")
        assert m[0x2000:0x2010] == b"via region_write"
        m[0x3000:0x3004] = b"mmap"
        assert tiny.region_read(2, 0x3000, 4) == b"mmap"       # REGION_READ works on mmap areas too


def test_close_releases_the_memfd():
    dev = GpuDevice.from_profile("tiny")
    fd = dev.memory[2].fd
    dev.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_zero_length_access_is_einval(tiny):
    for index in (0, 2, 4, 7):
        with pytest.raises(OSError) as exc:
            tiny.region_read(index, 0, 0)
        assert exc.value.errno == errno.EINVAL


def test_concurrent_injection_and_served_reads_stay_consistent(tiny):
    import threading
    stop = threading.Event()
    problems = []

    def reader():
        while not stop.is_set():
            for off in range(0, 0x40000, 0x1000):
                data, bad = tiny.region_read_mc(2, off, 0x1000)
                if bad is None and len(data) != 0x1000 or bad is not None and len(data) != bad - off:
                    problems.append((off, bad, len(data)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1000):
            tiny.poison.inject(bar=2, offset=(i * 0x1040) % 0x40000)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert len(tiny.poison) > 0 and all(p.length % 64 == 0 for p in tiny.poison)
