"""What the e2e guest checks, read from the device model so nothing is typed in twice.

guest_facts(profile) returns the KEY=value pairs of the guest's /etc/e2e.conf
(e2e/guest-init.sh documents each key); expected_record(...) says what the host
must find in the error record the guest copies out of BAR0.
"""
from __future__ import annotations

from dataclasses import dataclass

from hugepfn.abi import cper, registers
from hugepfn.device.profiles import PAGE_SIZE, load_profile

# The page `make e2e` poisons: above 4 GiB, so the 64-bit part of the BAR offset and of
# the device physical address is exercised; unaligned, so the record must show the
# naturally aligned block.  The write/read-back check uses a different page.
POISON_OFFSET = 5 * (1 << 30) + 0x3000 + 0x123
POISON_GRANULARITY = PAGE_SIZE
DATA_OFFSET = 0x10_0000
# The guest has no driver, so it points the error vector at an IDT vector no driver
# owns; the kernel then logs "No irq handler for vector" when the MSI arrives, which is
# the guest's evidence the interrupt was delivered.  0xd0 is far above what the few
# legacy and ACPI interrupts of a one-CPU guest are given and below the system vectors.
APIC_VECTOR = 0xD0


def field_offset(struct, name: str) -> int:
    """Byte offset of a fixed-size construct Struct field."""
    offset = 0
    for sub in struct.subcons:
        if sub.name == name:
            return offset
        offset += sub.sizeof()
    raise KeyError(name)


@dataclass(frozen=True)
class ExpectedRecord:
    bar: int
    bar_offset: int
    length: int
    physical_addr: int
    granularity: int


def expected_record(profile: str) -> ExpectedRecord:
    spec = load_profile(profile).memory_bars[0]
    start = POISON_OFFSET & ~(POISON_GRANULARITY - 1)
    return ExpectedRecord(bar=spec.index, bar_offset=start, length=POISON_GRANULARITY,
                          physical_addr=spec.dpa_base + start, granularity=POISON_GRANULARITY)


def guest_facts(profile: str) -> dict[str, str]:
    spec = load_profile(profile)
    memory = spec.memory_bars[0]
    if memory.memory_size <= POISON_OFFSET:
        raise ValueError(f"profile {profile}: the e2e run poisons BAR{memory.index} offset "
                         f"{POISON_OFFSET:#x}, beyond its {memory.memory_size:#x} bytes of memory")
    return {
        "VENDOR_ID": f"{spec.vendor_id:#06x}",
        "DEVICE_ID": f"{spec.device_id:#06x}",
        "REG_BAR": str(spec.register_bar.index),
        "ID_OFFSET": f"{registers.REG_ID:#x}",
        "ID_WIDTH": "32",
        "ID_VALUE": f"{spec.vendor_id | spec.device_id << 16:#010x}",
        "DATA_BAR": str(memory.index),
        "DATA_OFFSET": f"{DATA_OFFSET:#x}",
        "DATA_BAR_SIZE": f"{memory.size:#x}",            # the whole BAR window
        "DATA_MEMORY_SIZE": f"{memory.memory_size:#x}",  # the memory behind it (nvgrace: less)
        "ERROR_VECTOR": str(spec.error_vector),
        "APIC_VECTOR": str(APIC_VECTOR),
        "ERRQ_COUNT_OFFSET": f"{registers.REG_ERRQ_COUNT:#x}",
        "ERRQ_HEAD_OFFSET": f"{registers.REG_ERRQ_HEAD:#x}",
        "ERRQ_WINDOW_OFFSET": f"{registers.REG_ERRQ_WINDOW:#x}",
        "RECORD_SIZE": str(cper.ERROR_RECORD_SIZE),
        "RECORD_BAR_FIELD": str(field_offset(cper.ErrorRecord, "bar")),
        "RECORD_OFFSET_FIELD": str(field_offset(cper.ErrorRecord, "bar_offset")),
        "POISON_BAR": str(memory.index),
        "POISON_OFFSET": f"{POISON_OFFSET:#x}",
        "POISON_GRANULARITY": str(POISON_GRANULARITY),
    }
