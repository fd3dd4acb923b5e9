"""The plugin as a user meets it: suites written in a temporary directory use its fixtures
and helpers, run by pytester (in-process, or in a subprocess for xdist and `-p`)."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_SUITE = '''
from hugepfn.testing import assert_mapping, assert_no_signal, assert_signal

def test_pmd_then_poison(hugepfn_host):
    host = hugepfn_host(policy="upstream")
    proc = host.spawn(100, "app", [100, 101])
    bar = proc.mmap_bar("gpu", 2)
    assert_mapping(bar.access(0x200000), level="pmd")
    result = host.poison("gpu", bar=2, offset=0x201000)
    assert_no_signal(result)
    assert_signal(bar.access(0x201000, tid=101), "BUS_MCEERR_AR", addr=bar.va(0x201000), lsb=12, tid=101)

def test_served_device_alone(hugepfn_served_device):
    served = hugepfn_served_device("tiny", "python")
    assert served.backend_name == "python" and served.socket_path.is_socket()
'''


def test_a_user_suite_passes(pytester):
    pytester.makepyfile(test_user=USER_SUITE)
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=2)


def test_failing_assertions_say_what_happened(pytester):
    pytester.makepyfile(test_fails='''
        from hugepfn.testing import assert_mapping, assert_no_signal, assert_signal

        def test_wrong_address(hugepfn_host):
            host = hugepfn_host()
            bar = host.spawn(100, "app").mmap_bar("gpu", 2)
            host.poison("gpu", bar=2, offset=0x201000)
            assert_signal(bar.access(0x201000), "BUS_MCEERR_AR", addr=0x1234)

        def test_wrong_level(hugepfn_host):
            host = hugepfn_host()
            bar = host.spawn(100, "app").mmap_bar("gpu", 2)
            bar.access(0)
            assert_mapping(bar, bar.addr, "pud")

        def test_unexpected_signal(hugepfn_host):
            host = hugepfn_host()
            bar = host.spawn(100, "app").mmap_bar("gpu", 2)
            host.poison("gpu", bar=2, offset=0x201000)
            assert_no_signal(bar.access(0x201000))
    ''')
    result = pytester.runpytest("-q")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        ">       assert_signal(bar.access(0x201000), \"BUS_MCEERR_AR\", addr=0x1234)",
        "E       AssertionError: expected exactly 1 signal SIGBUS BUS_MCEERR_AR addr=0x1234 lsb=12, found 0 matching; "
        "signals sent:",
        "E         tid=100 SIGBUS BUS_MCEERR_AR addr=0x7f0000201000 lsb=12",
        "E       AssertionError: expected a PUD mapping at 0x7f0000000000 in pid 100, "
        "found a PMD leaf va=0x7f0000000000 pfn=0x100000",
        "E       AssertionError: expected no signal, but 1 sent:",
        "E         tid=100 SIGBUS BUS_MCEERR_AR addr=0x7f0000201000 lsb=12",
    ])


def test_kernel_marker_parametrizes_hugepfn_host(pytester):
    pytester.makepyfile(test_kernels='''
        import pytest

        @pytest.mark.hugepfn_kernel("6.19", "7.0")
        def test_profile(hugepfn_host, hugepfn_kernel):
            assert hugepfn_host(attach=False).machine.profile.name == hugepfn_kernel

        def test_default(hugepfn_kernel):
            assert hugepfn_kernel == "7.3"
    ''')
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_profile?kernel-6.19? PASSED*", "*test_profile?kernel-7.0? PASSED*"])


def test_unknown_kernel_in_the_marker_is_a_one_line_collection_error(pytester):
    pytester.makepyfile(test_bad='''
        import pytest

        @pytest.mark.hugepfn_kernel("5.4")
        def test_x(hugepfn_kernel):
            pass
    ''')
    result = pytester.runpytest("-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_bad.py*",
                                 "test_bad.py::test_x: hugepfn_kernel: unknown kernel profile '5.4' "
                                 "(choose from 6.1, 6.12, 6.16, 6.17, 6.18, 6.19, 7.0, 7.1, 7.2, 7.3, 6.12.0)"])
    assert "Traceback" not in result.stdout.str() and "pluggy" not in result.stdout.str()


def test_backend_option_reaches_the_factory(pytester):
    pytester.makepyfile(test_opt='''
        def test_backend(hugepfn_served_device, hugepfn_backend):
            assert hugepfn_backend == "python"
            assert hugepfn_served_device().backend_name == "python"
    ''')
    pytester.runpytest("-q", "--hugepfn-backend=python").assert_outcomes(passed=1)
    bad = pytester.runpytest("-q", "--hugepfn-backend=qemu")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--hugepfn-backend: invalid choice: 'qemu'*"])


ISOLATION_SUITE = '''
import os
import pytest

@pytest.mark.parametrize("n", range(4))
def test_private_paths(hugepfn_host, hugepfn_events_dir, n, tmp_path_factory):
    host = hugepfn_host()
    served = host.devices["gpu"].served
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    record = tmp_path_factory.getbasetemp().parent / f"seen-{worker}-{n}.txt"
    record.write_text(f"{worker} {served.socket_path} {os.environ['HUGEPFN_EVENTS_DIR']}")
    assert os.environ["HUGEPFN_EVENTS_DIR"] == str(hugepfn_events_dir)
'''


def test_xdist_workers_get_their_own_sockets_and_events_dirs(pytester):
    pytester.makepyfile(test_iso=ISOLATION_SUITE)
    result = pytester.runpytest_subprocess("-q", "-n", "2", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=4)
    seen = [p.read_text().split() for p in pytester.path.rglob("seen-*.txt")]      # under its --basetemp
    assert len(seen) == 4
    assert {worker for worker, _, _ in seen} == {"gw0", "gw1"}
    assert len({sock for _, sock, _ in seen}) == 4 and len({ev for _, _, ev in seen}) == 4


def test_explicit_p_without_entry_points(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_user=USER_SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "hugepfn.testing.plugin", timeout=120)
    result.assert_outcomes(passed=2)


DRIVER_MODULE = '''
from hugepfn.host.drivers import VfioPciCoreDevice


class LoudGpu(VfioPciCoreDevice):
    driver_name = "loud-gpu"


HUGEPFN_DRIVERS = {"loud-gpu": LoudGpu}
'''


def test_the_ini_key_hugepfn_drivers_makes_a_driver_module_available(pytester):
    # a subprocess: the driver registry of a session is process-wide (as for `hugepfn run
    # --driver-module`), and this process's must not learn of loud-gpu
    pytester.makepyfile(loud_drivers=DRIVER_MODULE)
    pytester.makeini("[pytest]\npythonpath = .\nhugepfn_drivers = loud_drivers\n")
    pytester.makepyfile(test_loud='''
        def test_bound_by_name(hugepfn_host):
            host = hugepfn_host(driver="loud-gpu")
            bar = host.spawn(100, "app").mmap_bar("gpu", 2)
            bar.access(0x200000)
            assert host.log()[-1] == ("loud-gpu 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 9) BAR 2 "
                                      "page offset 0x200: 0x100")
    ''')
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1)


def test_a_bad_hugepfn_drivers_module_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nhugepfn_drivers = no_such_driver_module\n")
    pytester.makepyfile(test_nothing="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key hugepfn_drivers: cannot import 'no_such_driver_module': "
                                 "No module named 'no_such_driver_module'"])
