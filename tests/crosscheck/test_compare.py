"""The crosscheck's converter and diff on hand-written probe output: what each rule does."""
from __future__ import annotations

from hugepfn.crosscheck.compare import compare, crash_matches, log_equal
from hugepfn.crosscheck.observe import _calls, fold_splats, kernel_trace, parse_event
from hugepfn.host.scenario.spec import parse_scenario

EV = "           qemu-4242    [000] .....     6.03: {}"


def ev(text: str):
    return parse_event(EV.format(text))


def test_calls_are_the_outermost_driver_entries_with_their_returns():
    events = [ev("hf: (vfio_pci_mmap_huge_fault+0x4/0x1c0 [vfio_pci_core]) order=18 addr=0x7d0000001000"),
              ev("hf_ret: (__handle_mm_fault+0x3c5/0xff0 <- vfio_pci_mmap_huge_fault) ret=0x800"),
              ev("pf: (vfio_pci_mmap_page_fault+0x4/0x10 [vfio_pci_core]) addr=0x7d0000001000"),
              ev("hf: (vfio_pci_mmap_huge_fault+0x4/0x1c0 [vfio_pci_core]) order=0 addr=0x7d0000001000"),
              ev("hf_ret: ([unknown/kretprobe'd] <- vfio_pci_mmap_huge_fault) ret=0x100"),
              ev("pf_ret: (__do_fault+0x33/0x120 <- vfio_pci_mmap_page_fault) ret=0x100")]
    assert _calls(events, 4242) == [{"order": 18, "ret": "VM_FAULT_FALLBACK"}, {"order": 0, "ret": "VM_FAULT_NOPAGE"}]
    assert _calls(events, 4243) == []


def test_a_warn_splat_is_one_line_of_where_and_how():
    splat = ["------------[ cut here ]------------",
             "WARNING: CPU: 0 PID: 4242 at arch/x86/mm/pat/memtype.c:1028 untrack_pfn+0xd5/0xe0",
             "Modules linked in: vfio_pci vfio", "RIP: 0010:untrack_pfn+0xd5/0xe0", "Call Trace:", " <TASK>",
             " unmap_single_vma+0x96/0xd0", " ? ksys_read+0xb7/0xf0", " copy_vma+0x19e/0x260",
             " do_syscall_64+0x5d/0xb0", " entry_SYSCALL_64_after_hwframe+0x6e/0xd8", " </TASK>",
             "---[ end trace 0000000000000000 ]---"]
    assert fold_splats(["before"] + splat + ["after"]) == [
        "before", "WARNING: at arch/x86/mm/pat/memtype.c:1028 untrack_pfn (call trace: unmap_single_vma, copy_vma)",
        "after"]


def test_ptr_stands_for_a_per_boot_address_and_nothing_else():
    model = ["mm/pgtable-generic.c:44: bad pud <ptr>(800000fc000002b7)"]
    assert log_equal(model, ["mm/pgtable-generic.c:44: bad pud 0000000039462d9a(800000fc000002b7)"])
    assert not log_equal(model, ["mm/pgtable-generic.c:42: bad pud 0000000039462d9a(800000fc000002b7)"])
    assert not log_equal(model, ["mm/pgtable-generic.c:44: bad pud 0000000039462d9a(800000fc000002f7)"])
    assert not log_equal(model, [])


def test_a_crash_matches_by_its_first_line_and_the_model_s_frames_in_order():
    model = {"first_line": "BUG: unable to handle page fault for address: <ptr>",
             "call_trace": ["_raw_spin_lock", "__split_huge_pmd", "vma_adjust_trans_huge"]}
    kernel = {"first_line": "BUG: unable to handle page fault for address: ffdbadbc70000028",
              "call_trace": ["_raw_spin_lock", "__split_huge_pmd", "vma_adjust_trans_huge", "__split_vma"]}
    assert crash_matches(model, kernel)
    assert not crash_matches(model, dict(kernel, call_trace=["__split_huge_pmd", "_raw_spin_lock"]))
    assert not crash_matches(model, dict(kernel, first_line="BUG: kernel NULL pointer dereference"))


SCENARIO = {"device": [{"name": "D", "bars": [{"index": 0, "phys": 0xfc00000000, "size": "8G"}]}],
            "process": [{"comm": "qemu", "pid": 4242}],
            "step": [{"do": "mmap", "pid": 4242, "device": "D", "region": 0, "length": "1G", "addr": 0x7f0000000000},
                     {"do": "access", "tid": 4242, "addr": 0x7f0000123456},
                     {"do": "access", "tid": 4242, "addr": 0x7f0000200000}]}


def guest_lines() -> list[str]:
    return ["B 1", "R 1 0", "E 1",
            "B 2", "K " + EV.format("hmf: (handle_mm_fault+0x4/0x300) address=0x7f0000123456 flags=0x1254"),
            "K " + EV.format("hf: (vfio_pci_mmap_huge_fault+0x4/0x1c0 [vfio_pci_core]) order=18 addr=0x7f0000123000"),
            "K " + EV.format("ipud: (vmf_insert_pfn_pud+0x4/0xd0) pfn=0xfc00000 addr=0x7f0000123000"),
            "K " + EV.format("ipud_ret: (vfio_pci_mmap_huge_fault+0xf4/0x1c0 <- vmf_insert_pfn_pud) ret=0x100"),
            "K " + EV.format("hf_ret: (__handle_mm_fault+0x3c5/0xff0 <- vfio_pci_mmap_huge_fault) ret=0x100"),
            "K " + EV.format("hmf_ret: (do_user_addr_fault+0x2bd/0x810 <- handle_mm_fault) ret=0x100"),
            "R 2 0 signalled=0",
            "L 7 vfio-pci 0000:00:10.0: vfio_pci_mmap_huge_fault(,order = 18) BAR 0 page offset 0x0: 0x100",
            "L 4 hrtimer: interrupt took 162717788 ns", "E 2",
            "B 3", "R 3 0 signalled=0", "E 3"]


def test_the_kernel_view_infers_the_leaf_a_hit_lands_on_and_drops_guest_noise():
    scenario = parse_scenario(SCENARIO)
    trace = kernel_trace(guest_lines(), scenario, {4242: 4242})
    first, hit = trace["steps"][1], trace["steps"][2]
    assert first["calls"] == [{"order": 18, "ret": "VM_FAULT_NOPAGE"}]
    assert first["mapped"] == {"level": "pud", "va": "0x7f0000000000", "pfn": "0xfc00000"}
    assert first["log"] == ["vfio-pci 0000:00:10.0: vfio_pci_mmap_huge_fault(,order = 18) BAR 0 page offset 0x0: 0x100"]
    assert (hit["ret"], hit["calls"], hit["mapped"]) == ("0", [], first["mapped"])


def test_a_difference_names_the_step_the_field_and_both_sides():
    scenario = parse_scenario(SCENARIO)
    kernel = kernel_trace(guest_lines(), scenario, {4242: 4242})
    model = {"steps": [dict(s) for s in kernel["steps"]]}
    model["steps"][1]["calls"] = [{"order": 18, "ret": "VM_FAULT_FALLBACK"}]
    [bad] = [v for v in compare(model, kernel, {4242: 4242}) if not v.agrees]
    assert (bad.index, bad.do, [(d.field, d.model, d.kernel) for d in bad.differences]) == (
        2, "access", [("calls", [{"order": 18, "ret": "VM_FAULT_FALLBACK"}], [{"order": 18, "ret": "VM_FAULT_NOPAGE"}])])


def test_a_scenario_naming_a_pid_the_probe_keeps_for_the_guest_is_not_crosschecked():
    import pytest

    from hugepfn.crosscheck.plan import NotCrosscheckable, plan

    assert plan(parse_scenario(SCENARIO), "ok").lines[-1] == "end"
    high = dict(SCENARIO, process=[{"comm": "qemu", "pid": 4242, "threads": [4242, 20000]}])
    with pytest.raises(NotCrosscheckable) as exc:
        plan(parse_scenario(high), "high")
    assert str(exc.value) == ("pid 20000: the probe keeps pids from 20000 up for the guest's own tasks "
                              "(probe.c park_pid_counter)")
