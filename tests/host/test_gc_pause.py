"""collector_paused: the collector is off inside, back to what it was after (exceptions and
nesting included), and memory_failure() leaves it as it found it."""
import errno
import gc

import pytest

from hugepfn.host.gc_pause import collector_paused


@pytest.fixture(autouse=True)
def _restore_collector():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_off_inside_and_on_after():
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()          # the inner one keeps the outer one's pause
    assert gc.isenabled()


def test_restored_after_an_exception():
    gc.enable()
    with pytest.raises(KeyError):
        with collector_paused():
            raise KeyError("x")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_memory_failure_leaves_the_collector_enabled():
    from hugepfn.host.machine import Machine
    from hugepfn.host.memory_failure import memory_failure_of

    gc.enable()
    m = Machine(kernel="7.0")
    assert memory_failure_of(m).memory_failure(0x12345, 0) == -errno.EBUSY    # no registration: MF_IGNORED
    assert gc.isenabled()
