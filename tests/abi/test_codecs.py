"""The struct codecs of the hot path are derived from the construct declarations (fast_codec), and
the ABI is declared once: no other module declares the numbers hugepfn.abi holds."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from construct import GreedyBytes, Int16ub, Int16ul, Int32ul, Int64ul, Struct

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio_user import fast_codec

REPO = Path(__file__).resolve().parents[2]


def test_fast_codecs_are_the_declarations_fixed_parts():
    assert (wire.HEADER.format, wire.HEADER.size) == ("<HHLLL", wire.HEADER_SIZE)
    assert (wire.REGION_ACCESS.format, wire.REGION_ACCESS.size) == ("<QLL", 16)
    assert (wire.DMA_ACCESS.format, wire.DMA_ACCESS.size) == ("<QQ", 16)
    header = dict(msg_id=0xBEEF, cmd=wire.Command.REGION_WRITE, msg_size=40, flags=wire.FLAG_NO_REPLY, error_no=5)
    assert wire.HEADER.pack(*header.values()) == wire.Header.build(header)
    access = dict(offset=0x1122_3344_5566_7788, region=7, count=4, data=b"\1\2\3\4")
    assert wire.REGION_ACCESS.pack(0x1122_3344_5566_7788, 7, 4) + b"\1\2\3\4" == wire.RegionAccess.build(access)


def test_fast_codec_stops_at_the_first_variable_field_and_refuses_big_endian():
    assert fast_codec(Struct("a" / Int16ul, "b" / Int64ul, "rest" / GreedyBytes, "c" / Int32ul)).format == "<HQ"
    with pytest.raises(ValueError, match=r"^b: not a little-endian field \(>H\)$"):
        fast_codec(Struct("a" / Int16ul, "b" / Int16ub))


# Names hugepfn.abi declares that once had copies elsewhere: no module outside abi/ assigns them.
ONCE = ("VFIO_PCI_CONFIG_REGION_INDEX", "VFIO_PCI_BAR0_REGION_INDEX", "VFIO_PCI_NUM_REGIONS",
        "VFIO_REGION_INFO_FLAG_READ", "VFIO_PCI_MSIX_IRQ_INDEX", "PCI_COMMAND", "PCI_COMMAND_MEMORY",
        "PCI_BASE_ADDRESS_0", "PCI_VENDOR_ID", "PCI_STATUS", "REG_SCRATCH", "REG_ERRQ_WINDOW", "HEADER",
        "REGION_ACCESS", "CPER_MEM_ERR_MULTI_ECC", "ERROR_RECORD_SIZE")


def test_the_shared_abi_is_declared_only_in_abi():
    pattern = r"^\s*(" + "|".join(ONCE) + r")\s*="
    out = subprocess.run(["grep", "-rnE", "--include=*.py", pattern, "device", "host", "cli", "testing", "bench",
                          "e2e", "crosscheck", "tests"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    assert out.stdout == ""
    declared = "".join((REPO / "abi" / name).read_text() for name in ("pci.py", "vfio.py", "vfio_user.py",
                                                                       "registers.py", "cper.py"))
    assert all(re.search(rf"^{name} =", declared, re.M) for name in ONCE)
