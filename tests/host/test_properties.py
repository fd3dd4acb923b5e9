"""Property test: random step sequences never crash the runner, and afterwards every leaf lies
inside a VMA of its mm and maps exactly the pfns that VMA's file offsets name (the page table
never disagrees with the mappings), whatever mix of faults, zaps, munmaps and state changes ran."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugepfn.host.drivers.vfio_pci_core import VfioPciCoreDevice
from hugepfn.host.mm.constants import PAGE_SHIFT, PMD_SIZE, PUD_SIZE
from hugepfn.host.scenario import parse_scenario
from hugepfn.host.scenario.runner import ScenarioRun

VA = 0x7f0000000000
SLOTS = [VA + i * PUD_SIZE + j for i in range(3) for j in (0, 0x1000, PMD_SIZE, PMD_SIZE + 0x3000)]

addr = st.sampled_from(SLOTS).flatmap(lambda a: st.integers(0, 4 * PMD_SIZE).map(lambda d: a + d))
step = st.one_of(
    st.builds(lambda a, o, n: {"do": "mmap", "pid": 10, "device": "D", "region": 0, "offset": o,
                               "length": n, "addr": a & ~0xFFF},
              addr, st.sampled_from([0, 0x1000, PMD_SIZE, PUD_SIZE]), st.sampled_from([0x3000, PMD_SIZE, PUD_SIZE])),
    st.builds(lambda a, w, t: {"do": "access", "tid": t, "addr": a, "write": w}, addr, st.booleans(),
              st.sampled_from([10, 11])),
    st.builds(lambda a, n: {"do": "munmap", "pid": 10, "addr": a & ~0xFFF, "length": n}, addr,
              st.sampled_from([0x1000, PMD_SIZE, PUD_SIZE])),
    st.builds(lambda a, n, h: {"do": "madvise", "pid": 10, "addr": a & ~0xFFF, "length": n,
                               "advice": "MADV_HUGEPAGE" if h else "MADV_NOHUGEPAGE"},
              addr, st.sampled_from([0x1000, PMD_SIZE]), st.booleans()),
    st.builds(lambda o, n: {"do": "zap", "device": "D", "offset": o, "length": n},
              st.integers(0, 2 * PUD_SIZE), st.sampled_from([0, 0x1000, PMD_SIZE])),
    st.builds(lambda v: {"do": "config_write", "device": "D", "offset": 4, "size": 2, "value": v},
              st.sampled_from([0, 6])),
    st.sampled_from([{"do": "reset", "device": "D"}, {"do": "low_power_entry", "device": "D"},
                     {"do": "low_power_exit", "device": "D"}]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["6.12", "7.0"]), st.sampled_from(["x86_64", "arm64"]), st.lists(step, max_size=25))
def test_random_steps_keep_the_page_table_consistent(kernel, arch, steps):
    data = {"kernel": kernel, "arch": arch,
            "device": [{"name": "D", "bars": [{"index": 0, "phys": 0x3800000000, "size": "4G"}]}],
            "process": [{"comm": "q", "pid": 10, "threads": [10, 11]}], "step": steps}
    run = ScenarioRun(parse_scenario(data))
    trace = run.run().to_json()
    assert len(trace["steps"]) == len(steps)
    mm = run.machine.tasks.process(10).mm
    for leaf in mm.pgtable.leaves():
        vma = mm.find_vma(leaf.va)
        assert vma is not None and leaf.va + leaf.size <= vma.vm_end, (leaf, vma)
        dev = vma.vm_private_data
        assert isinstance(dev, VfioPciCoreDevice)
        assert leaf.pfn == dev.vma_to_pfn(vma) + ((leaf.va - vma.vm_start) >> PAGE_SHIFT), (leaf, vma)
    pud, pmd, pte = mm.pgtable.counts()
    assert trace["summary"]["10"] == {"pud": pud, "pmd": pmd, "pte": pte, "faults": mm.nr_faults}
