"""The emulated GPU: one PCI function built from a profile, served through ``ServedDevice``.

Regions (vfio PCI indexes): the register BAR (trapped, no fd), memory BARs (memfd, one
sparse area over the real memory), the MSI-X BAR (table + PBA, trapped), CONFIG (7, 4 KiB).
The upper half of a 64-bit BAR, unused BARs, ROM (6) and VGA (8) report size 0, flags 0.

Interrupts go to the sink the backend installs: MSI-X vectors when MSI-X is enabled in
config space, otherwise INTx for the doorbell and the vfio ERR index for error records.
All public methods hold one lock, so a backend thread and a test/host thread may share it.
"""
from __future__ import annotations

import errno
import os
import threading
import struct
from pathlib import Path

from hugepfn.abi import pci
from hugepfn.abi import vfio
from hugepfn.abi.cper import CPER_MEM_ERR_MULTI_ECC, MemoryErrorRecord, build_record, parse_record
from hugepfn.abi.registers import CONTROL_ERR_IRQ
from hugepfn.device.config_layout import (MSIX_OFFSET, PCIE_OFFSET, REBAR_CTRL_SIZE_MASK,
                                          REBAR_CTRL_SIZE_SHIFT, bar_rules, build_layout,
                                          rebar_control_offset)
from hugepfn.device.config_space import ConfigSpace
from hugepfn.device.interface import InterruptSink, IrqInfo, RegionInfo
from hugepfn.device.memory import MemoryBar
from hugepfn.device.msix import MsixState
from hugepfn.device.poison import PoisonEvent, PoisonModel
from hugepfn.device.poison_store import DeviceIdentity, PoisonStore
from hugepfn.device.profiles import Profile, load_profile
from hugepfn.device.registers import RegisterFile, RegisterHooks

_unpack_u32 = struct.Struct("<I").unpack
_CONFIG = vfio.VFIO_PCI_CONFIG_REGION_INDEX


class PoisonedReadError(OSError):
    """A trapped read hit poison: errno EIO, like copy_mc returning a short count.

    ``partial`` holds the bytes before the first poisoned byte; ``bad_offset`` is the
    region offset of that byte; ``short_count`` == len(partial).
    """

    def __init__(self, index: int, offset: int, partial: bytes, bad_offset: int):
        super().__init__(errno.EIO, f"region {index}: poisoned memory at offset {bad_offset:#x} "
                                    f"({len(partial)} of the requested bytes were readable)")
        self.index = index
        self.offset = offset
        self.partial = partial
        self.bad_offset = bad_offset

    @property
    def short_count(self) -> int:
        return len(self.partial)


def _outside(index: int, offset: int, count: int, size: int) -> OSError:
    return OSError(errno.EINVAL, f"region {index}: access of {count} bytes at {offset:#x} is "
                                 f"outside its {size:#x} bytes")


class GpuDevice:
    device_flags = vfio.VFIO_DEVICE_FLAGS_RESET | vfio.VFIO_DEVICE_FLAGS_PCI
    num_regions = vfio.VFIO_PCI_NUM_REGIONS
    num_irqs = vfio.VFIO_PCI_NUM_IRQS

    def __init__(self, profile: Profile, state_dir: str | os.PathLike | None = None):
        self.profile = profile
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._lock = threading.RLock()
        self._sink: InterruptSink | None = None
        self.interrupts_without_sink = 0
        self.intx_asserted = False
        self._intx_masked = False
        self._intx_pending = False
        self._sequence = 0
        self.memory: dict[int, MemoryBar] = {}
        self._memory_listeners: list = []
        self._closed = False

        layout = build_layout(profile)
        self._rebar_bars = layout.rebar_bars
        self.config = ConfigSpace(layout.image, layout.rw_mask, layout.w1c_mask)
        self.config.hooks[pci.PCI_COMMAND] = self._command_written
        self.config.hooks[MSIX_OFFSET] = self._msix_control_written
        self.config.hooks[PCIE_OFFSET + 8] = self._devctl_written
        for entry in range(len(layout.rebar_bars)):
            self.config.hooks[rebar_control_offset(entry)] = self._rebar_hook(entry)

        try:
            for spec in profile.memory_bars:
                self.memory[spec.index] = MemoryBar(spec, profile.name)
            self.msix = MsixState(profile.msix_vectors, self._deliver_msix)
            first_mem = profile.memory_bars[0] if profile.memory_bars else None
            self.registers = RegisterFile(
                ident=profile.vendor_id | profile.device_id << 16,
                mem_bar=first_mem.index if first_mem else None,
                mem_size=first_mem.memory_size if first_mem else 0,
                mem_dpa=first_mem.dpa_base if first_mem else 0,
                queue_capacity=profile.error_queue_entries,
                status_registers=profile.status_registers,
                hooks=RegisterHooks(doorbell=self.doorbell, intx_ack=self._intx_ack,
                                    poison_ranges=lambda: len(self.poison),
                                    intx_asserted=lambda: self.intx_asserted))
            store = PoisonStore(self.state_dir, DeviceIdentity.of(profile)) if self.state_dir is not None else None
            try:
                self.poison = PoisonModel(profile.bars, store=store, on_inject=self._poison_injected,
                                          lock=self._lock)
            except BaseException:
                if store is not None:
                    store.close()
                raise
        except BaseException:
            self.close()
            raise
        # The trapped BARs (registers, MSI-X) never change size: region index -> (size, the
        # object that reads and writes it), so an access skips building its RegionInfo.
        self._trapped = {spec.index: (spec.size, self.registers if spec.kind == "registers" else self.msix)
                         for spec in profile.bars if spec.kind in ("registers", "msix")}

    @classmethod
    def from_profile(cls, name_or_path: str | os.PathLike, state_dir: str | os.PathLike | None = None
                     ) -> "GpuDevice":
        return cls(load_profile(name_or_path), state_dir=state_dir)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            for bar in self.memory.values():
                bar.close()
            poison = getattr(self, "poison", None)
            if poison is not None and poison.store is not None:
                poison.store.close()
            self._closed = True

    def __enter__(self) -> "GpuDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """Function reset (DEVICE_RESET, FLR): config space, MSI-X and registers return to
        their reset values.  Memory contents, the poison set and the error queue survive."""
        with self._lock:
            was_enabled = self.memory_enabled
            self.config.reset()
            for bar in self.memory.values():
                bar.window = bar.spec.size
            self.msix.reset()
            self.registers.reset()
            self.intx_asserted = self._intx_pending = False
            if was_enabled:
                for listener in list(self._memory_listeners):
                    listener(False)

    # -- config-derived state the host model reads ----------------------------------------
    @property
    def command(self) -> int:
        return self.config.field(pci.PCI_COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & pci.PCI_COMMAND_MEMORY)

    def add_memory_enable_listener(self, listener) -> None:
        """``listener(enabled: bool)`` runs whenever COMMAND's Memory Space bit changes (a
        host model zaps its mappings when decoding is turned off, as vfio-pci does)."""
        self._memory_listeners.append(listener)

    @property
    def bus_master_enabled(self) -> bool:
        return bool(self.command & pci.PCI_COMMAND_MASTER)

    @property
    def msix_enabled(self) -> bool:
        return self.msix.enabled

    def bar_size(self, index: int) -> int:
        """Current size of BAR ``index`` (a Resizable BAR may have changed it); 0 if unused."""
        if index in self.memory:
            return self.memory[index].window
        spec = self.profile.bar(index)
        return spec.size if spec else 0

    def bar_address(self, index: int) -> int:
        """The bus address software programmed into BAR ``index`` (type bits masked off)."""
        spec = self.profile.bar(index)
        if spec is None:
            raise OSError(errno.EINVAL, f"BAR {index} is not implemented")
        off = pci.PCI_BASE_ADDRESS_0 + 4 * index
        value = self.config.field(off, 8 if spec.is_64bit else 4)
        return value & ~0xF

    # -- ServedDevice: regions ------------------------------------------------------------------
    def region_info(self, index: int) -> RegionInfo:
        with self._lock:
            if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
                return RegionInfo(index=index, size=self.config.size,
                                  flags=vfio.VFIO_REGION_INFO_FLAG_READ | vfio.VFIO_REGION_INFO_FLAG_WRITE)
            spec = self.profile.bar(index) if 0 <= index <= vfio.VFIO_PCI_BAR5_REGION_INDEX else None
            if spec is None:
                if not 0 <= index < self.num_regions:
                    raise OSError(errno.EINVAL, f"no region {index} (the device has {self.num_regions})")
                return RegionInfo(index=index, size=0, flags=0)
            rw = vfio.VFIO_REGION_INFO_FLAG_READ | vfio.VFIO_REGION_INFO_FLAG_WRITE
            if spec.kind == "memory":
                bar = self.memory[index]
                return RegionInfo(index=index, size=bar.window,
                                  flags=rw | vfio.VFIO_REGION_INFO_FLAG_MMAP | vfio.VFIO_REGION_INFO_FLAG_CAPS,
                                  fd=bar.fd, fd_offset=0, sparse_areas=bar.sparse_areas,
                                  is_64bit=spec.is_64bit, prefetchable=spec.prefetchable)
            return RegionInfo(index=index, size=spec.size, flags=rw, is_64bit=spec.is_64bit,
                              prefetchable=spec.prefetchable)

    def _check_access(self, index: int, offset: int, count: int) -> tuple[int, str]:
        size = self.region_info(index).size
        if size == 0:
            raise OSError(errno.EINVAL, f"region {index} does not exist on this device")
        if count <= 0 or offset < 0 or offset + count > size:
            raise _outside(index, offset, count, size)
        if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
            return size, "config"
        return size, self.profile.bar(index).kind

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        """Read ``count`` bytes; poisoned memory raises PoisonedReadError (EIO, with the
        readable prefix attached), never returns garbage."""
        if index == _CONFIG and count == 4 and not offset & 3 and 0 <= offset < 4096:
            with self._lock:                 # the fast path of every config cycle
                return bytes(self.config.data[offset:offset + 4])
        trapped = self._trapped.get(index)
        if trapped is not None:              # the fast path of every register access
            size, target = trapped
            if count <= 0 or offset < 0 or offset + count > size:
                raise _outside(index, offset, count, size)
            with self._lock:
                return target.read(offset, count)
        data, bad = self.region_read_mc(index, offset, count)
        if bad is not None:
            raise PoisonedReadError(index, offset, data, bad)
        return data

    def region_read_mc(self, index: int, offset: int, count: int) -> tuple[bytes, int | None]:
        """copy_mc semantics: (bytes up to the first poisoned byte, its offset) or (all, None)."""
        with self._lock:
            _size, kind = self._check_access(index, offset, count)
            if kind == "config":
                return self.config.read(offset, count), None
            if kind == "registers":
                return self.registers.read(offset, count), None
            if kind == "msix":
                return self.msix.read(offset, count), None
            bad = self.poison.first_poisoned(index, offset, count)
            good = count if bad is None else bad - offset
            return self.memory[index].read(offset, good), bad

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == _CONFIG and len(data) == 4 and not offset & 3 and 0 <= offset < 4096:
            with self._lock:                 # the fast path of every config cycle
                self.config.write32(offset, _unpack_u32(data)[0])
            return
        trapped = self._trapped.get(index)
        if trapped is not None:              # the fast path of every register access
            size, target = trapped
            if not data or offset < 0 or offset + len(data) > size:
                raise _outside(index, offset, len(data), size)
            with self._lock:
                target.write(offset, data)
            return
        with self._lock:
            if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
                self.config.write(offset, data)      # does its own bounds checks
                return
            _size, kind = self._check_access(index, offset, len(data))
            if kind == "registers":
                self.registers.write(offset, data)
            elif kind == "msix":
                self.msix.write(offset, data)
            else:
                # Posted writes do not consume poison: the data lands and the poison stays,
                # unless the profile says writes repair (DAX-like: pmem_clear_poison), in which case
                # the cachelines the write fully covers become good again.
                self.memory[index].write(offset, data)
                if self.profile.repair_by_write:
                    self.poison.repair_covered(index, offset, len(data))

    # -- ServedDevice: interrupts -------------------------------------------------------------
    def irq_info(self, index: int) -> IrqInfo:
        counts = {
            vfio.VFIO_PCI_INTX_IRQ_INDEX: 1 if self.profile.interrupt_pin else 0,
            vfio.VFIO_PCI_MSI_IRQ_INDEX: 0,            # no MSI capability, MSI-X only
            vfio.VFIO_PCI_MSIX_IRQ_INDEX: self.profile.msix_vectors,
            vfio.VFIO_PCI_ERR_IRQ_INDEX: 1,
            vfio.VFIO_PCI_REQ_IRQ_INDEX: 1,
        }
        if index not in counts:
            raise OSError(errno.EINVAL, f"no IRQ index {index} (the device has {self.num_irqs})")
        return IrqInfo(index=index, count=counts[index], flags=vfio.VFIO_IRQ_INFO_EVENTFD)

    def set_interrupt_sink(self, sink: InterruptSink | None) -> None:
        with self._lock:
            self._sink = sink

    def irq_state_changed(self, index: int, start: int, count: int, masked: bool) -> None:
        """The client masked/unmasked vectors (SET_IRQS MASK/UNMASK or eventfd de-assign)."""
        with self._lock:
            if index == vfio.VFIO_PCI_MSIX_IRQ_INDEX:
                self.msix.set_client_mask(start, count, masked)
            elif index == vfio.VFIO_PCI_INTX_IRQ_INDEX:
                self._intx_masked = masked
                if not masked and self._intx_pending:
                    self._intx_pending = False
                    self._emit(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0)
            elif index not in (vfio.VFIO_PCI_MSI_IRQ_INDEX, vfio.VFIO_PCI_ERR_IRQ_INDEX,
                               vfio.VFIO_PCI_REQ_IRQ_INDEX):
                raise OSError(errno.EINVAL, f"no IRQ index {index}")

    def _emit(self, index: int, vector: int) -> None:
        if self._sink is None:
            self.interrupts_without_sink += 1
            return
        self._sink(index, vector)

    def _deliver_msix(self, vector: int) -> None:
        self._emit(vfio.VFIO_PCI_MSIX_IRQ_INDEX, vector)

    def raise_intx(self) -> None:
        """Assert INTx (a no-op on a profile without an interrupt pin)."""
        if not self.profile.interrupt_pin:
            return
        with self._lock:
            self.intx_asserted = True
            self.config.set_field(pci.PCI_STATUS, 2, self.config.field(pci.PCI_STATUS, 2)
                                  | pci.PCI_STATUS_INTERRUPT)
            if self.command & pci.PCI_COMMAND_INTX_DISABLE:
                return
            if self._intx_masked:
                self._intx_pending = True
                return
            self._emit(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0)

    def _intx_ack(self) -> None:
        self.intx_asserted = self._intx_pending = False
        self.config.set_field(pci.PCI_STATUS, 2, self.config.field(pci.PCI_STATUS, 2)
                              & ~pci.PCI_STATUS_INTERRUPT)

    def doorbell(self, vector: int) -> None:
        """What a write to the DOORBELL register does: MSI-X vector ``vector`` (latched in
        the PBA if masked) when MSI-X is enabled, else INTx."""
        with self._lock:
            if self.msix.enabled:
                if 0 <= vector < self.profile.msix_vectors:
                    self.msix.raise_vector(vector)
            else:
                self.raise_intx()

    # -- poison -> error record -> interrupt ----------------------------------------------------
    def _poison_injected(self, event: PoisonEvent) -> None:
        with self._lock:
            self._sequence += 1
            record = build_record(sequence=self._sequence, bar=event.bar, bar_offset=event.offset,
                                  length=event.length, dpa=event.dpa, granularity=event.granularity,
                                  error_type=event.error_type)
            self.registers.queue.push(record)
            if not self.registers.control & CONTROL_ERR_IRQ:
                return
            if self.msix.enabled:
                self.msix.raise_vector(self.profile.error_vector)
            else:
                self._emit(vfio.VFIO_PCI_ERR_IRQ_INDEX, 0)

    def inject_poison(self, *, bar: int | None = None, offset: int | None = None,
                      dpa: int | None = None, granularity: int = 64,
                      error_type: int = CPER_MEM_ERR_MULTI_ECC) -> PoisonEvent:
        """Shorthand for ``self.poison.inject(...)``."""
        return self.poison.inject(bar=bar, offset=offset, dpa=dpa, granularity=granularity,
                                  error_type=error_type)

    @property
    def error_sequence(self) -> int:
        """Sequence number of the newest error record the device built (0: none yet)."""
        return self._sequence

    def queued_errors(self) -> list[MemoryErrorRecord]:
        """The records waiting in the BAR0 error queue, decoded (does not retire them)."""
        with self._lock:
            return [parse_record(r) for r in self.registers.queue.records]

    # -- config hooks --------------------------------------------------------------------------
    def _command_written(self, old: int, new: int, written: int) -> None:
        # The hook sees the COMMAND|STATUS dword.  INTx is level-triggered: clearing
        # Interrupt Disable while the line is asserted delivers it.
        re_enabled = (old & ~new) & pci.PCI_COMMAND_INTX_DISABLE
        if re_enabled and self.intx_asserted and not self._intx_masked:
            self._emit(vfio.VFIO_PCI_INTX_IRQ_INDEX, 0)
        if (old ^ new) & pci.PCI_COMMAND_MEMORY:
            for listener in list(self._memory_listeners):
                listener(bool(new & pci.PCI_COMMAND_MEMORY))

    def _msix_control_written(self, old: int, new: int, written: int) -> None:
        control = new >> 16
        self.msix.enabled = bool(control & pci.PCI_MSIX_FLAGS_ENABLE)
        self.msix.function_masked = bool(control & pci.PCI_MSIX_FLAGS_MASKALL)
        self.msix.deliver_unmasked_pending()

    def _devctl_written(self, old: int, new: int, written: int) -> None:
        if written & pci.PCI_EXP_DEVCTL_BCR_FLR:
            self.reset()

    def _rebar_hook(self, entry: int):
        bar_index = self._rebar_bars[entry]
        spec = self.profile.bar(bar_index)

        def written(old: int, new: int, _written: int) -> None:
            code = (new & REBAR_CTRL_SIZE_MASK) >> REBAR_CTRL_SIZE_SHIFT
            size = 1 << (20 + code)
            ctrl_off = rebar_control_offset(entry)
            if size not in spec.resizable_sizes:
                self.config.set_field(ctrl_off, 4, old)      # unsupported size: ignored
                return
            for rule in bar_rules(spec, size):
                self.config.set_rw_mask32(rule.offset, rule.rw)
                value = self.config.field(rule.offset, 4)
                keep = rule.rw | (0 if rule.offset == pci.PCI_BASE_ADDRESS_0 + 4 * bar_index + 4 else 0xF)
                self.config.set_field(rule.offset, 4, value & keep)
            self.memory[bar_index].window = size
        return written
