"""The device as libvfio-user sees it: the context's regions, config space, IRQs, reset and DMA
callbacks, interrupt delivery and the device's DMA access (``DeviceContext``, a part of the
libvfio-user backend's Server).

Callbacks from C never let a Python exception through: each one catches everything and returns
-1 with ``ffi.errno`` set (the library turns that errno into the error reply).  Every callback
object and every fd handed to the library is kept alive until the context is destroyed.  The
callbacks run in the owner thread (hugepfn.device.vfio_user.server_loop), inside the library.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass

from hugepfn.abi import vfio
from hugepfn.device.vfio_user import libvfio_user_cdef as C
from hugepfn.device.vfio_user.libvfio_user_library import ffi, libc

log = logging.getLogger("hugepfn.device.vfio_user.backend_libvfio_user")

MAX_DMA_REGIONS = 65535  # the protocol's default max_dma_maps


class UnsupportedDevice(ValueError):
    """The device has a shape libvfio-user cannot represent."""


@dataclass(frozen=True)
class DmaRegion:
    """One DMA_MAP window as libvfio-user registered it."""
    iova: int
    size: int
    prot: int
    mapped: bool  # True when the client passed an fd and the library mmapped it


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (ValueError, IndexError, KeyError, TypeError)):
        return errno.EINVAL
    return errno.EIO


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _prepare_socket_path(path: str) -> None:
    """Refuse to clobber anything but a stale socket; make sure the folder exists."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"socket folder {folder} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: left behind by a server that died
        return
    finally:
        probe.close()
    raise FileExistsError(errno.EADDRINUSE, f"a server is already listening on {path}")


_umask_lock = threading.Lock()


class DeviceContext:
    """Builds the libvfio-user context of ``self.device`` and answers the library's callbacks.
    Its state (``_ctx``, ``_lib``, ``_keep``, ``_region_fds``, ``_region_sizes``, ``_dma``,
    the IRQ sets, ``stats``) is made by the Server's constructor."""

    def _raise_errno(self, what: str):
        err = ffi.errno or errno.EIO
        raise OSError(err, f"libvfio-user: {what} failed: {os.strerror(err)}")

    def _create_context(self):
        # The library binds the socket itself; a restrictive umask makes it 0600
        # from the first instant (umask is process-wide, hence the lock).
        with _umask_lock:
            old = os.umask(0o177)
            try:
                ctx = self._lib.vfu_create_ctx(C.VFU_TRANS_SOCK, self.socket_path.encode(),
                                               C.LIBVFIO_USER_FLAG_ATTACH_NB, ffi.NULL,
                                               C.VFU_DEV_TYPE_PCI)
            finally:
                os.umask(old)
        if ctx == ffi.NULL:
            self._raise_errno(f"vfu_create_ctx({self.socket_path})")
        os.chmod(self.socket_path, 0o600)
        return ctx

    def _callback(self, ctype: str, fn, error):
        cb = ffi.callback(ctype, fn, error=error)
        self._keep.append(cb)
        return cb

    def _setup_log(self):
        def on_log(_ctx, level, msg):
            try:
                text = ffi.string(msg).decode(errors="replace")
                # The library logs a client's bad requests at LOG_ERR: that is the
                # client's problem, not ours, so only its graver levels get louder.
                log.log(logging.WARNING if level <= 2 else logging.DEBUG, "libvfio-user: %s", text)
                if text.startswith("failed to reply") and self._conn is not None:
                    # Its sendmsg() timed out or was cut (SEND_BLOCK_S): the client does
                    # not read, and a reply is lost or half sent; the stream is broken.
                    self._drop_client(f"not reading its replies (libvfio-user: {text})")
            except BaseException:  # never into C
                pass
        self._lib.vfu_setup_log(self._ctx, self._callback("vfu_log_fn", on_log, None), C.LOG_INFO)

    def _setup_config_space(self):
        info = self.device.region_info(vfio.VFIO_PCI_CONFIG_REGION_INDEX)
        if info.size not in (256, 4096):
            raise UnsupportedDevice(f"config space of {info.size} bytes; libvfio-user serves 256 or 4096")
        pci_type = C.VFU_PCI_TYPE_EXPRESS if info.size == 4096 else C.VFU_PCI_TYPE_CONVENTIONAL
        if self._lib.vfu_pci_init(self._ctx, pci_type, C.PCI_HEADER_TYPE_NORMAL, 0) != 0:
            self._raise_errno("vfu_pci_init")
        # Keep the library's private copy equal to the device's, although with
        # ALWAYS_CB every config access is answered by the device itself: that is
        # what makes both backends expose byte-identical config space.
        initial = self.device.region_read(vfio.VFIO_PCI_CONFIG_REGION_INDEX, 0, info.size)
        ffi.memmove(self._lib.vfu_pci_get_config_space(self._ctx), initial, info.size)
        flags = C.VFU_REGION_FLAG_READ | C.VFU_REGION_FLAG_WRITE | C.VFU_REGION_FLAG_ALWAYS_CB
        self._setup_region(vfio.VFIO_PCI_CONFIG_REGION_INDEX, info.size, flags)

    def _setup_regions(self):
        for index in range(min(self.device.num_regions, C.VFU_PCI_DEV_NUM_REGIONS)):
            if index == vfio.VFIO_PCI_CONFIG_REGION_INDEX:
                continue
            info = self.device.region_info(index)
            if info.size == 0:
                continue
            flags = 0
            if info.flags & vfio.VFIO_REGION_INFO_FLAG_READ:
                flags |= C.VFU_REGION_FLAG_READ
            if info.flags & vfio.VFIO_REGION_INFO_FLAG_WRITE:
                flags |= C.VFU_REGION_FLAG_WRITE
            if index <= vfio.VFIO_PCI_ROM_REGION_INDEX:
                flags |= C.VFU_REGION_FLAG_MEM
            if info.is_64bit:
                flags |= C.VFU_REGION_FLAG_64_BITS
            if info.prefetchable:
                flags |= C.VFU_REGION_FLAG_PREFETCH
            if index <= vfio.VFIO_PCI_BAR5_REGION_INDEX:
                if not _is_pow2(info.size):
                    raise UnsupportedDevice(f"BAR{index} size {info.size:#x} is not a power of two")
                if info.is_64bit and index % 2:
                    raise UnsupportedDevice(f"64-bit BAR{index} must sit at an even index")
            fd = -1
            areas = ffi.NULL
            nr_areas = 0
            if info.fd is not None and info.flags & vfio.VFIO_REGION_INFO_FLAG_MMAP:
                fd = os.dup(info.fd)  # ours for the context's life; the library never closes it
                self._region_fds.append(fd)
                if info.sparse_areas:
                    nr_areas = len(info.sparse_areas)
                    areas = ffi.new("struct iovec[]", nr_areas)
                    for slot, area in zip(areas, info.sparse_areas):
                        slot.iov_base = ffi.cast("void *", area.offset)
                        slot.iov_len = area.size
                    self._keep.append(areas)
            self._setup_region(index, info.size, flags, areas, nr_areas, fd, info.fd_offset)

    def _setup_region(self, index, size, flags, areas=ffi.NULL, nr_areas=0, fd=-1, fd_offset=0):
        access = self._callback("vfu_region_access_fn", self._make_access(index), -1)
        if self._lib.vfu_setup_region(self._ctx, index, size, access, flags, areas, nr_areas,
                                      fd, fd_offset) != 0:
            self._raise_errno(f"vfu_setup_region(index={index}, size={size:#x}, flags={flags:#x})")
        self._region_sizes[index] = size

    def _make_access(self, index: int):
        read, write, fail = self.device.region_read, self.device.region_write, self._fail

        def access(_ctx, buf, count, offset, is_write):
            try:
                if is_write:
                    write(index, offset, ffi.unpack(buf, count))
                else:
                    data = read(index, offset, count)
                    if len(data) != count:
                        raise OSError(errno.EIO, f"region {index} read returned {len(data)} of {count} bytes")
                    ffi.memmove(buf, data, count)
                return count
            except BaseException as exc:
                return fail(exc, f"region {index} {'write' if is_write else 'read'} at {offset:#x}+{count}")
        return access

    def _fail(self, exc: BaseException, what: str) -> int:
        """Turn an exception inside a C callback into -1 with errno set."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self._callback_exit = exc  # re-raised by the owner loop once back in Python
            self._stop.set()
        err = _errno_of(exc)
        self.stats["callback_errors"] += 1
        log.debug("%s failed: errno %d (%s)", what, err, exc)
        ffi.errno = err
        return -1

    def _setup_irqs(self):
        for index in range(vfio.VFIO_PCI_NUM_IRQS):
            count = self.device.irq_info(index).count if index < self.device.num_irqs else 0
            if self._lib.vfu_setup_device_nr_irqs(self._ctx, index, count) != 0:
                self._raise_errno(f"vfu_setup_device_nr_irqs({index}, {count})")
            state = self._callback("vfu_irq_state_fn", self._make_irq_state(index), None)
            if self._lib.vfu_setup_irq_state_callback(self._ctx, index, state) != 0:
                self._raise_errno(f"vfu_setup_irq_state_callback({index})")

    def _make_irq_state(self, index: int):
        def on_state(_ctx, start, count, mask):
            try:
                vectors = [(index, vector) for vector in range(start, start + count)]
                # vfu_irq_trigger ignores masks, so the backend holds masked vectors
                # pending itself, as the python engine (and a PBA) does.
                if mask:
                    self._masked_irqs.update(vectors)
                else:
                    self._masked_irqs.difference_update(vectors)
                self.device.irq_state_changed(index, start, count, bool(mask))
                if not mask:  # deliver what was raised while it could not be
                    for key in vectors:
                        if key in self._pending_irqs:
                            self._pending_irqs.discard(key)
                            self._deliver(*key)
            except BaseException as exc:
                self._fail(exc, f"irq state of index {index}")
        return on_state

    def _setup_reset_and_dma(self):
        def on_reset(_ctx, reset_type):
            try:
                if reset_type == C.VFU_RESET_LOST_CONN:
                    # Device state is kept across clients; the library has already
                    # dropped DMA maps and is about to close the IRQ eventfds.
                    self._pending_irqs.clear()
                    self._masked_irqs.clear()
                    self.stats["disconnects"] += 1
                else:
                    self.device.reset()
                    self.stats["resets"] += 1
                return 0
            except BaseException as exc:
                return self._fail(exc, f"reset type {reset_type}")

        def on_dma_register(_ctx, info):
            try:
                iova = int(ffi.cast("uintptr_t", info.iova.iov_base))
                vaddr = int(ffi.cast("uintptr_t", info.vaddr))
                region = DmaRegion(iova, info.iova.iov_len, info.prot, vaddr != 0)
                with self._dma_lock:
                    self._dma[iova] = (region, vaddr)
                self.stats["dma_maps"] += 1
            except BaseException as exc:
                self._fail(exc, "DMA register")

        def on_dma_unregister(_ctx, info):
            try:
                with self._dma_lock:
                    self._dma.pop(int(ffi.cast("uintptr_t", info.iova.iov_base)), None)
                self.stats["dma_unmaps"] += 1
            except BaseException as exc:
                self._fail(exc, "DMA unregister")

        lib = self._lib
        if lib.vfu_setup_device_reset_cb(self._ctx, self._callback("vfu_reset_fn", on_reset, -1)) != 0:
            self._raise_errno("vfu_setup_device_reset_cb")
        if lib.vfu_setup_device_dma(self._ctx, MAX_DMA_REGIONS,
                                    self._callback("vfu_dma_fn", on_dma_register, None),
                                    self._callback("vfu_dma_fn", on_dma_unregister, None)) != 0:
            self._raise_errno("vfu_setup_device_dma")

    def _raise_interrupt(self, index: int, vector: int) -> None:
        """The device's InterruptSink: callable from any thread."""
        if self._closed:
            return
        self._irq_queue.append((index, vector))
        self._wake()

    def _deliver(self, index: int, vector: int) -> None:
        """Owner thread only."""
        if index in (vfio.VFIO_PCI_ERR_IRQ_INDEX, vfio.VFIO_PCI_REQ_IRQ_INDEX):
            # libvfio-user has no public call that signals the ERR/REQ eventfds.
            self.stats["irqs_unsupported"] += 1
            return
        if (index, vector) in self._masked_irqs:
            self._pending_irqs.add((index, vector))
            self.stats["irqs_pending"] += 1
            return
        # INTx, MSI and MSI-X share one eventfd table in libvfio-user (only one of
        # them is enabled at a time, as in VFIO), indexed by vector.
        if self._lib.vfu_irq_trigger(self._ctx, vector) == 0:
            self.stats["irqs_triggered"] += 1
        elif ffi.errno == errno.ENOENT:  # no eventfd assigned (masked or de-assigned)
            self._pending_irqs.add((index, vector))
            self.stats["irqs_pending"] += 1
        else:
            self.stats["irqs_invalid"] += 1

    def dma_regions(self) -> list[DmaRegion]:
        with self._dma_lock:
            return sorted((region for region, _ in self._dma.values()), key=lambda r: r.iova)

    def _dma_address(self, iova: int, size: int) -> int:
        with self._dma_lock:
            for region, vaddr in self._dma.values():
                if region.iova <= iova and iova + size <= region.iova + region.size:
                    if not region.mapped:
                        raise OSError(errno.EFAULT, f"DMA window at {region.iova:#x} has no fd to access")
                    return vaddr + (iova - region.iova)
        raise OSError(errno.EFAULT, f"no DMA window covers {iova:#x}+{size:#x}")

    @staticmethod
    def _copy(call, what: str, address: int, buffer, size: int) -> None:
        local = ffi.new("struct iovec *", {"iov_base": buffer, "iov_len": size})
        remote = ffi.new("struct iovec *", {"iov_base": ffi.cast("void *", address), "iov_len": size})
        if size and call(os.getpid(), local, 1, remote, 1, 0) != size:
            raise OSError(errno.EFAULT, f"DMA {what} of {size:#x} bytes at host address {address:#x} "
                                        "failed (the client's file is short or the window read-only)")

    def dma_read(self, iova: int, size: int) -> bytes:
        """Read client memory of a DMA_MAP made with an fd (runs in the owner thread)."""
        def read():
            buffer = ffi.new("char[]", size)
            self._copy(libc.process_vm_readv, "read", self._dma_address(iova, size), buffer, size)
            return ffi.unpack(buffer, size)
        return self.call_in_owner(read)

    def dma_write(self, iova: int, data: bytes) -> None:
        def write():
            buffer = ffi.from_buffer(data)
            self._copy(libc.process_vm_writev, "write", self._dma_address(iova, len(data)), buffer,
                       len(data))
        self.call_in_owner(write)
