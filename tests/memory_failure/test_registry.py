"""register/unregister_pfn_address_space (reference section 5) and nvgrace-gpu's registration
at device open (docs/kernel-reference.md: nvgrace-gpu)."""
from __future__ import annotations

import errno

import pytest

from hugepfn.host.machine import Machine
from hugepfn.host.memory_failure import PfnSpaceRegistry, RegistryCorruption, memory_failure_of
from hugepfn.host.mm.mapping import AddressSpace
from hugepfn.host.mm.pfn_space import PfnAddressSpace

from .conftest import GiB, RESMEM_PFN, USEMEM_PFN, USEMEM_PHYS, RESMEM_PHYS, nvgrace_machine


def cb(vma, pfn):
    return 0, pfn


def space(start, last, callback=cb):
    return PfnAddressSpace(start, last, AddressSpace(), callback)


def test_register_lookup_is_inclusive_at_both_ends():
    reg = PfnSpaceRegistry()
    s = space(0x1000, 0x1fff)
    assert reg.register(s) == 0
    assert reg.lookup(0x1000) == [s]
    assert reg.lookup(0x1fff) == [s]
    assert reg.lookup(0x2000) == []
    assert reg.lookup(0xfff) == []


def test_register_without_callback_is_einval():
    reg = PfnSpaceRegistry()
    assert reg.register(space(0, 10, None)) == -errno.EINVAL
    assert len(reg) == 0


def test_overlap_is_ebusy_including_a_shared_last_pfn_and_adjacent_is_fine():
    reg = PfnSpaceRegistry()
    assert reg.register(space(0x1000, 0x1fff)) == 0
    assert reg.register(space(0x1fff, 0x2fff)) == -errno.EBUSY      # shares pfn 0x1fff
    assert reg.register(space(0x0, 0x1000)) == -errno.EBUSY
    assert reg.register(space(0x1100, 0x1200)) == -errno.EBUSY      # inside
    assert reg.register(space(0x2000, 0x2fff)) == 0                 # adjacent
    assert len(reg) == 2


def test_start_after_last_is_accepted_but_never_matches():
    reg = PfnSpaceRegistry()
    odd = space(0x20, 0x10)
    assert reg.register(odd) == 0
    assert reg.lookup(0x10) == [] and reg.lookup(0x20) == [] and reg.lookup(0x18) == []
    assert reg.register(space(0x10, 0x20)) == 0         # nothing overlaps an empty range


def test_unregister_removes_only_that_object_and_is_a_noop_without_overlap():
    reg = PfnSpaceRegistry()
    a = space(0x1000, 0x1fff)
    reg.register(a)
    reg.unregister(space(0x5000, 0x5fff))               # no overlap: nothing happens
    assert reg.lookup(0x1000) == [a]
    reg.unregister(a)
    assert reg.lookup(0x1000) == []
    assert reg.register(space(0x1000, 0x1fff)) == 0     # the range is free again


def test_unregister_of_another_object_overlapping_a_registered_space_raises():
    reg = PfnSpaceRegistry()
    reg.register(space(0x1000, 0x1fff))
    with pytest.raises(RegistryCorruption):
        reg.unregister(space(0x1000, 0x1fff))


def test_config_memory_failure_n_stubs():
    reg = PfnSpaceRegistry(enabled=False)
    s = space(1, 2)
    assert reg.register(s) == -errno.EOPNOTSUPP
    reg.unregister(s)                                    # does nothing, never raises
    assert len(reg) == 0


@pytest.mark.parametrize("kernel", ["6.12", "6.16"])
def test_no_registration_api_before_6_19(kernel):
    m = Machine(kernel=kernel)
    assert m.register_pfn_address_space(space(1, 2)) == -errno.EOPNOTSUPP


def test_6_19_refuses_a_space_without_callback():
    m = Machine(kernel="6.19")
    assert m.register_pfn_address_space(space(1, 2, None)) == -errno.EINVAL
    assert m.register_pfn_address_space(space(1, 2)) == 0


def test_nvgrace_registers_resmem_then_usemem_at_open_on_7_0():
    m = nvgrace_machine("7.0")
    dev = m.device("gpu")
    regs = [(s.region, s.start, s.last) for s in dev.registered]
    assert regs == [(2, RESMEM_PFN, RESMEM_PFN + (GiB >> 12) - 1), (4, USEMEM_PFN, USEMEM_PFN + (4 * GiB >> 12) - 1)]
    reg = memory_failure_of(m).registry
    assert [s.region for s in reg.lookup(USEMEM_PFN)] == [4]
    assert [s.region for s in reg.lookup(RESMEM_PFN + (GiB >> 12) - 1)] == [2]
    dev.close_device()
    assert reg.lookup(USEMEM_PFN) == [] and reg.lookup(RESMEM_PFN) == [] and dev.registered == []


def test_nvgrace_does_not_register_on_6_19():
    m = nvgrace_machine("6.19")
    assert m.device("gpu").registered == []
    assert len(memory_failure_of(m).registry) == 0


def test_nvgrace_open_tolerates_config_memory_failure_n():
    m = nvgrace_machine("7.0", config_memory_failure=False)
    assert m.device("gpu").is_open and m.device("gpu").registered == []


def test_nvgrace_open_fails_and_unwinds_on_ebusy():
    m = Machine(kernel="7.0")
    blocker = space(USEMEM_PFN + 5, USEMEM_PFN + 5)
    assert m.register_pfn_address_space(blocker) == 0
    with pytest.raises(OSError) as exc:
        m.add_device("gpu", "nvgrace-gpu", "0000:09:01.0", usemem=(USEMEM_PHYS, 4 * GiB), resmem=(RESMEM_PHYS, GiB))
    assert exc.value.errno == errno.EBUSY
    reg = memory_failure_of(m).registry
    assert reg.lookup(RESMEM_PFN) == []           # resmem was registered first, then unregistered
    assert reg.lookup(USEMEM_PFN + 5) == [blocker]
