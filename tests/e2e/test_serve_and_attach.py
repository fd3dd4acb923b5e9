"""A served device on each backend, attached by the host over vfio-user: sockets, BAR
placement, and data through the host's mapping seen by REGION_READ (and back)."""
from __future__ import annotations

import pytest

from hugepfn.device.vfio_user.backends import available_backends

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not choice.available, reason=f"{name}: {choice.reason}"))
            for name, choice in available_backends().items()]
MiB = 1 << 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_served_device_lives_in_the_test_directory(hugepfn_served_device, hugepfn_workdir, backend):
    served = hugepfn_served_device("tiny", backend)
    assert served.backend_name == backend
    assert served.socket_path.parent == hugepfn_workdir
    assert served.socket_path.is_socket()
    with served.control() as control:
        status = control.status()
    assert (status["profile"], status["backend"], status["poisoned_pages"]) == ("tiny", backend, 0)
    served.close()
    assert not served.socket_path.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_firmware_places_bars_and_host_pfns_follow(hugepfn_host, backend):
    host = hugepfn_host(backend=backend)
    gpu = host.devices["gpu"]
    # tiny: BAR0 64 KiB registers, BAR2 64 MiB 64-bit memory, BAR4 16 KiB MSI-X
    assert {i: (p.address, p.size, p.is_64bit) for i, p in gpu.placements.items()} == {
        0: (0xC000_0000, 0x10000, False), 2: (0x1_0000_0000, 64 * MiB, True), 4: (0xC001_0000, 0x4000, False)}
    assert host.pfn("gpu", 2, 0x201040) == 0x100201
    assert host.registrations == {("gpu", 2): 0}
    # BAR0's identity register, read by the host driver over vfio-user: device << 16 | vendor
    assert gpu.host_device.pdev.read_bar0(0) == 0x2330_10DE


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_through_the_host_mapping_is_what_region_read_returns(hugepfn_host, backend):
    host = hugepfn_host(backend=backend)
    proc = host.spawn(4242, "qemu")
    bar = proc.mmap_bar("gpu", 2)
    payload = bytes(range(256)) * 16
    bar.write(0x3F_F000, payload)
    assert bar.device.region_read(2, 0x3F_F000, len(payload)) == payload
    bar.device.client.region_write(2, 0x10, b"from the socket")
    assert bar.read(0x10, 15) == b"from the socket"


def test_two_devices_get_disjoint_bars_and_their_own_reports(hugepfn_host, hugepfn_served_device):
    host = hugepfn_host()
    second = host.attach(hugepfn_served_device("tiny", "python"), name="gpu1")
    assert second.host_device.pdev.bdf == "0000:02:00.0"
    assert second.placements[2].address == 0x1_0400_0000          # right after gpu's 64 MiB BAR2
    assert host.registrations == {("gpu", 2): 0, ("gpu1", 2): 0}
    bar = host.spawn(100, "app").mmap_bar("gpu1", 2)
    bar.access(0)
    result = host.poison("gpu1", bar=2, offset=0x1000)
    assert (result.pfns, result.rets) == ([0x104001], [0])
    assert host.devices["gpu"].served.device.queued_errors() == []


def test_bad_requests_fail_with_one_line_errors(hugepfn_host):
    from hugepfn.device.control import ControlError
    from hugepfn.testing import HostError

    host = hugepfn_host()
    proc = host.spawn(100, "app")
    with pytest.raises(ControlError, match=r"^offset 0x4000000 is outside BAR 2's 0x4000000 bytes of memory$"):
        host.poison("gpu", bar=2, offset=64 * MiB)
    with pytest.raises(HostError, match=r"^\[Errno 22\] mmap of gpu BAR 2 \[0x0, \+0x8000000\) at 0x7f0000000000 "
                                        r"by pid 100: EINVAL$"):
        proc.mmap_bar("gpu", 2, length=128 * MiB)
    with pytest.raises(ValueError, match=r"^no attached device 'gpu7' \(attached: gpu\)$"):
        proc.mmap_bar("gpu7", 2)
    with pytest.raises(ValueError, match=r"^unknown policy 'nice'"):
        hugepfn_host(policy="nice")


def test_a_long_test_directory_gets_a_short_socket_directory(tmp_path):
    from hugepfn.testing.served import serve_device, short_dir

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path, temporary = short_dir(deep)
    try:
        assert temporary and len(path) < 40
        with serve_device(path, "tiny", "python") as served:
            assert served.socket_path.is_socket() and len(served.control_path) < 108
    finally:
        import shutil
        shutil.rmtree(path)
    assert short_dir(tmp_path) == (str(tmp_path), False)
