"""Serve a ``ServedDevice`` through libvfio-user, bound with cffi in ABI mode.

The library is found at run time (``HUGEPFN_LIBVFIO_USER``, then the dynamic
linker's search path, then a few install prefixes); nothing is compiled.  It
must be a build at or after commit 850ded8 (PR #832): older builds report BARs
of 4 GiB and more as size 0, which breaks every large BAR this project serves.

Threading: a libvfio-user context is not thread-safe, so exactly one *owner*
thread touches it.  That thread polls the context's fd (the listening socket
until a client attaches, the connection after), a wake-up eventfd and, while a
client is attached, the listening socket again so that a second client is
refused at once instead of hanging in the backlog.  Other threads never call
into the library: interrupts raised by the device and DMA accessors are queued
and the eventfd wakes the owner, which runs them.

Callbacks from C never let a Python exception through: each one catches
everything and returns -1 with ``ffi.errno`` set (the library turns that errno
into the error reply).  Every callback object and every fd handed to the
library is kept alive until the context is destroyed.
"""
from __future__ import annotations

import collections
import ctypes.util
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import stat
import struct
import tempfile
import termios
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from cffi import FFI

from hugepfn.device import interface as vfio
from hugepfn.device.vfio_user import libvfio_user_cdef as C
from hugepfn.device.vfio_user.limits import ConnectionLimits

log = logging.getLogger(__name__)

ENV_LIBRARY = "HUGEPFN_LIBVFIO_USER"
REQUIRED_VERSION = "850ded8"  # "Support 64b bar region size" (PR #832)
DOCS = "docs/libvfio-user.md"
COMMON_PATHS = (
    "/usr/local/lib/x86_64-linux-gnu/libvfio-user.so.0",
    "/usr/local/lib/aarch64-linux-gnu/libvfio-user.so.0",
    "/usr/local/lib64/libvfio-user.so.0",
    "/usr/local/lib/libvfio-user.so.0",
    "/usr/lib/x86_64-linux-gnu/libvfio-user.so.0",
    "/usr/lib64/libvfio-user.so.0",
    "/usr/lib/libvfio-user.so.0",
)

# A stalled peer must not pin the owner thread inside a blocking library call:
# the library reads a message body and negotiates VERSION with blocking I/O.
# These are the defaults of ConnectionLimits.recv_timeout and .negotiate_timeout.
IO_TIMEOUT_S = 2.0
ATTACH_TIMEOUT_S = 5.0
# The library sends a reply with one blocking sendmsg(); a client that does not read
# makes it wait for this long at most (then the reply is cut and the client dropped).
SEND_BLOCK_S = 0.5
MAX_DMA_REGIONS = 65535  # the protocol's default max_dma_maps

# libvfio-user reads a message body with one recv() without MSG_WAITALL, so a body
# larger than what one socket write queues (~200 KiB with default buffers) is a
# "short read": EINVAL, then the rest of the body is parsed as headers.  Only
# REGION_WRITE brings such bodies from a client; above this size the backend
# reads and answers it itself, in the owner thread, while the library is idle.
BYPASS_WRITE_BODY = 64 << 10
_PEEK_BYTES = 4096            # _message_complete: a message this small is seen whole in one peek
_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)    # (an int: OR-ing the IntFlags costs 3 us)
LIBRARY_MAX_DATA_XFER = 1 << 20  # what the library advertises as max_data_xfer_size
LIBRARY_MAX_MSG = LIBRARY_MAX_DATA_XFER + 32    # SERVER_MAX_MSG_SIZE: larger headers get EINVAL
PARTIAL_POLL_S = 0.01            # how often the rest of a partly arrived message is looked for
HEADER = struct.Struct("<HHIII")
REGION_ACCESS = struct.Struct("<QII")
CMD_REGION_WRITE = 10
F_TYPE_MASK, F_REPLY, F_NO_REPLY, F_ERROR = 0xF, 0x1, 0x10, 0x20

ffi = FFI()
ffi.cdef(C.CDEF)
# Copying guest memory with process_vm_readv/writev on ourselves turns a bad page
# (past the end of the client's file: SIGBUS; read-only: SIGSEGV) into EFAULT.
ffi.cdef("""
ssize_t process_vm_readv(int pid, const struct iovec *local, unsigned long nlocal,
                         const struct iovec *remote, unsigned long nremote, unsigned long flags);
ssize_t process_vm_writev(int pid, const struct iovec *local, unsigned long nlocal,
                          const struct iovec *remote, unsigned long nremote, unsigned long flags);
""")
_libc = ffi.dlopen(None)


class LibvfioUserUnavailable(OSError):
    """libvfio-user is missing, unloadable or too old for 64-bit BARs."""


class UnsupportedDevice(ValueError):
    """The device has a shape libvfio-user cannot represent."""


# ----------------------------------------------------------------------------------
# Finding and vetting the shared library


def _candidates() -> list[tuple[str, str]]:
    """(how it was found, what to dlopen), in the order they are tried."""
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:
        return [(f"{ENV_LIBRARY}={explicit}", explicit)]
    found = []
    name = ctypes.util.find_library("vfio-user")
    if name:
        found.append(("the dynamic linker's search path", name))
    found += [(path, path) for path in COMMON_PATHS if os.path.exists(path)]
    return found


def _supports_64bit_bars(lib) -> bool:
    """Probe the validation that PR #832 added together with 64-bit BAR sizes.

    Since #832 a BAR size must be a power of two and a 64-bit BAR may not sit at
    an odd index; older builds accept both (and truncate sizes to 32 bits).  The
    probe builds a throwaway context on a socket in a private temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="hugepfn-vfu-probe-") as folder:
        ctx = lib.vfu_create_ctx(C.VFU_TRANS_SOCK, os.path.join(folder, "probe.sock").encode(),
                                 C.LIBVFIO_USER_FLAG_ATTACH_NB, ffi.NULL, C.VFU_DEV_TYPE_PCI)
        if ctx == ffi.NULL:
            raise OSError(ffi.errno, f"vfu_create_ctx failed: {os.strerror(ffi.errno)}")
        try:
            mem = C.VFU_REGION_FLAG_READ | C.VFU_REGION_FLAG_WRITE | C.VFU_REGION_FLAG_MEM
            odd_64bit = lib.vfu_setup_region(ctx, 1, 4096, ffi.NULL, mem | C.VFU_REGION_FLAG_64_BITS,
                                             ffi.NULL, 0, -1, 0)
            not_pow2 = lib.vfu_setup_region(ctx, 2, 3 * 4096, ffi.NULL, mem, ffi.NULL, 0, -1, 0)
            big = lib.vfu_setup_region(ctx, 4, 1 << 33, ffi.NULL, mem | C.VFU_REGION_FLAG_64_BITS,
                                       ffi.NULL, 0, -1, 0)
        finally:
            lib.vfu_destroy_ctx(ctx)
    return odd_64bit == -1 and not_pow2 == -1 and big == 0


_loaded: tuple[object | None, str] | None = None
_load_lock = threading.Lock()


def _load() -> tuple[object | None, str]:
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = _find_and_vet()
        return _loaded


def _find_and_vet() -> tuple[object | None, str]:
    hint = f"build libvfio-user >= {REQUIRED_VERSION} (see {DOCS})"
    candidates = _candidates()
    if not candidates:
        return None, f"libvfio-user.so not found; {hint}"
    problems = []
    for how, target in candidates:
        if os.sep in target and not os.path.exists(target):
            problems.append(f"libvfio-user.so not found at {how}")
            continue
        try:
            lib = ffi.dlopen(target)
        except OSError as exc:
            problems.append(f"{how}: cannot load ({str(exc).split('.  ')[0]})")
            continue
        except AttributeError as exc:  # a symbol of the cdef is missing
            problems.append(f"{how}: not libvfio-user ({exc})")
            continue
        try:
            modern = _supports_64bit_bars(lib)
        except (OSError, AttributeError) as exc:
            problems.append(f"{how}: probe failed ({exc})")
            continue
        if not modern:
            problems.append(f"{how}: libvfio-user too old: no 64-bit BAR support")
            continue
        return lib, f"libvfio-user from {how} ({target})"
    if len(problems) == 1 and "too old" in problems[0]:
        return None, f"libvfio-user too old: no 64-bit BAR support; {hint}"
    return None, "; ".join(problems) + f"; {hint}"


def is_available() -> tuple[bool, str]:
    """(True, where it was found) or (False, a one-line reason with the fix)."""
    lib, reason = _load()
    return lib is not None, reason


def _library():
    lib, reason = _load()
    if lib is None:
        raise LibvfioUserUnavailable(errno.ENOENT, reason)
    return lib


# ----------------------------------------------------------------------------------
# The server


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


class Server:
    """libvfio-user serving one device on one UNIX socket, one client at a time."""

    backend_name = "libvfio-user"

    def __init__(self, device: vfio.ServedDevice, socket_path: str | os.PathLike,
                 limits: ConnectionLimits | None = None):
        self._lib = lib = _library()
        self.device = device
        self.socket_path = os.fspath(socket_path)
        self.limits = limits or ConnectionLimits(recv_timeout=IO_TIMEOUT_S, negotiate_timeout=ATTACH_TIMEOUT_S)
        self.stats = collections.Counter()
        self._last_input = 0.0          # monotonic time of the current client's last message
        self._stalled_since: float | None = None   # its replies have not been read since
        self._partial_since: float | None = None   # part of its next message arrived then
        self._keep: list = []           # cffi callbacks and buffers the library points to
        self._region_fds: list[int] = []
        self._region_sizes: dict[int, int] = {}
        self._conn: socket.socket | None = None   # our dup of the library's connection fd
        self._dma: dict[int, tuple[DmaRegion, int]] = {}   # iova -> (region, vaddr)
        self._dma_lock = threading.Lock()
        self._irq_queue: collections.deque[tuple[int, int]] = collections.deque()
        self._jobs: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._pending_irqs: set[tuple[int, int]] = set()   # raised while undeliverable
        self._masked_irqs: set[tuple[int, int]] = set()    # masked by SET_IRQS MASK
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._owner: int | None = None
        self._loop_exited: threading.Event | None = None   # set when the owner loop has returned
        self._teardown_on_exit = False
        self._attach_lock = threading.Lock()
        self._attaching = False
        self._callback_exit: BaseException | None = None
        self._attached = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

        self._ctx = ffi.NULL
        try:
            _prepare_socket_path(self.socket_path)
            self._ctx = self._create_context()
            self._listen_fd = lib.vfu_get_poll_fd(self._ctx)
            self._setup_log()
            self._setup_config_space()
            self._setup_regions()
            self._setup_irqs()
            self._setup_reset_and_dma()
            if lib.vfu_realize_ctx(self._ctx) != 0:
                self._raise_errno("vfu_realize_ctx")
        except BaseException:
            self._destroy()
            raise
        device.set_interrupt_sink(self._raise_interrupt)

    # -- construction ------------------------------------------------------------

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

    # -- interrupts and cross-thread work -----------------------------------------

    def _raise_interrupt(self, index: int, vector: int) -> None:
        """The device's InterruptSink: callable from any thread."""
        if self._closed:
            return
        self._irq_queue.append((index, vector))
        self._wake()

    def _wake(self):
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed, or the counter is saturated: the owner is awake anyway

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

    def call_in_owner(self, fn: Callable[[], object], timeout: float = 10.0):
        """Run ``fn`` in the thread that owns the context and return its result."""
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "server is closed")
        if self._owner in (None, threading.get_ident()):
            return fn()
        future: Future = Future()
        self._jobs.append((fn, future))
        self._wake()
        return future.result(timeout)

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
            self._copy(_libc.process_vm_readv, "read", self._dma_address(iova, size), buffer, size)
            return ffi.unpack(buffer, size)
        return self.call_in_owner(read)

    def dma_write(self, iova: int, data: bytes) -> None:
        def write():
            buffer = ffi.from_buffer(data)
            self._copy(_libc.process_vm_writev, "write", self._dma_address(iova, len(data)), buffer,
                       len(data))
        self.call_in_owner(write)

    # -- the owner loop --------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether a client is attached, as of the owner loop's last turn."""
        return self._attached

    def start(self) -> "Server":
        """Serve in a background thread (the owner thread)."""
        self._claim_owner()
        self._thread = threading.Thread(target=self._run, name=f"vfu:{self.socket_path}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until close() or, in the main thread, SIGTERM."""
        self._claim_owner()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        try:
            self._run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.close()

    def _claim_owner(self):
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "server is closed")
        if self._loop_exited is not None:
            raise RuntimeError("server already started")
        # Set before the loop runs so that a close() racing with start() waits for it.
        self._loop_exited = threading.Event()

    def _request_stop(self):
        self._stop.set()
        self._wake()

    def _run(self):
        self._owner = threading.get_ident()
        try:
            self._loop()
        finally:
            self._owner = None
            for _fn, future in self._drain_jobs():
                future.set_exception(OSError(errno.ESHUTDOWN, "server stopped"))
            self._loop_exited.set()
            if self._teardown_on_exit:
                self._teardown()
        if self._callback_exit is not None:
            raise self._callback_exit

    def _drain_jobs(self):
        while self._jobs:
            yield self._jobs.popleft()

    def _loop(self):
        lib, ctx = self._lib, self._ctx
        poller, watched = None, None
        while not self._stop.is_set():
            conn = lib.vfu_get_poll_fd(ctx)  # changes on attach and on disconnect
            attached = self._attached = conn != self._listen_fd
            want = (conn, attached)
            if want != watched:
                self._track_connection(conn if attached else None)
                poller = select.poll()
                poller.register(self._wake_fd, select.POLLIN)
                poller.register(conn, select.POLLIN | select.POLLRDHUP)
                if attached:  # to refuse a second client at once
                    poller.register(self._listen_fd, select.POLLIN)
                watched = want
            stalled = waiting = False
            timeout = None
            if attached and self._conn is not None:
                stalled = self._output_stalled()
                waiting = self._partial_since is not None
                # Stalled: wait for room to reply.  Waiting for the rest of a message:
                # look again every PARTIAL_POLL_S (its first part keeps POLLIN set).
                mask = select.POLLOUT if stalled else 0 if waiting else select.POLLIN
                poller.modify(conn, mask | select.POLLRDHUP)
                timeout = self._check_client_limits(time.monotonic())
                if waiting:
                    timeout = PARTIAL_POLL_S if timeout is None else min(timeout, PARTIAL_POLL_S)
            ready = dict(poller.poll(None if timeout is None else timeout * 1000 + 1))
            if self._wake_fd in ready:
                self._on_wake()
            gone = bool(ready.get(conn, 0) & (select.POLLHUP | select.POLLERR | select.POLLRDHUP))
            if self._stop.is_set():
                continue
            if not attached:
                if conn in ready:
                    self._attach()
            elif (conn in ready or waiting) and (not stalled or gone):
                self._serve_messages(peer_gone=gone)
            if attached and self._listen_fd in ready and not self._stop.is_set():
                # A client that connects right after the current one hung up must wait
                # for the library to see that hang-up, not be refused.
                hung_up = ready.get(conn, 0) & (select.POLLHUP | select.POLLRDHUP)
                if not hung_up and lib.vfu_get_poll_fd(ctx) == conn:
                    self._refuse_extra_client()

    def _on_wake(self):
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        while self._irq_queue:
            self._deliver(*self._irq_queue.popleft())
        for fn, future in self._drain_jobs():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _attach(self):
        with self._attach_lock:
            self._attaching = True
        watchdog = threading.Timer(self.limits.negotiate_timeout, self._abort_attach)
        watchdog.daemon = True
        watchdog.start()
        try:
            rc = self._lib.vfu_attach_ctx(self._ctx)
            err = ffi.errno
        finally:
            watchdog.cancel()
            with self._attach_lock:
                self._attaching = False
        if rc == 0:
            self.stats["connections"] += 1
            self._last_input = time.monotonic()
            self._stalled_since = self._partial_since = None
            log.info("vfio-user: client attached on %s (libvfio-user negotiated the version)", self.socket_path)
        elif err not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.stats["failed_attaches"] += 1
            log.info("vfio-user: client failed to negotiate: %s", os.strerror(err))

    def _abort_attach(self):
        """Unblock a VERSION negotiation with a client that never sends it."""
        with self._attach_lock:
            if not self._attaching:
                return
            conn = self._lib.vfu_get_poll_fd(self._ctx)  # a plain field read in the library
            if conn != self._listen_fd:
                _shutdown_fd(conn)

    def _track_connection(self, fd: int | None):
        """Keep a dup of the attached connection (closed as soon as the library drops it,
        so the client sees EOF) with I/O timeouts that also bound the library's reads."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if fd is not None:
            self._conn = socket.socket(fileno=os.dup(fd))
            self._writable = select.poll()            # for _output_stalled, one per connection
            self._writable.register(self._conn, select.POLLOUT)
            self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.limits.recv_timeout))
            self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                  _timeval(min(SEND_BLOCK_S, self.limits.send_timeout / 3)))

    def _output_stalled(self) -> bool:
        """The client leaves its replies unread (our socket buffer is full): the
        library's next reply would block, so no request is handed to it."""
        if self._writable.poll(0):
            self._stalled_since = None
            return False
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
        return True

    def _check_client_limits(self, now: float) -> float | None:
        """Hang up on a client over a limit; else the seconds until the next limit."""
        limits = self.limits
        if self._stalled_since is None and self._partial_since is None and limits.idle_limit is None:
            return None                    # no limit runs: a client that reads and sends whole messages
        # SEND_BLOCK_S inside the library plus this wait stay within send_timeout.
        stall_limit = limits.send_timeout - min(SEND_BLOCK_S, limits.send_timeout / 3)
        deadlines = []
        if self._stalled_since is not None:
            deadlines.append((self._stalled_since + stall_limit,
                              f"not reading its replies for {limits.send_timeout:g} s"))
        if limits.idle_limit is not None:
            deadlines.append((self._last_input + limits.idle_limit, f"idle for {limits.idle_limit:g} s (idle limit)"))
        if self._partial_since is not None:
            deadlines.append((self._partial_since + limits.recv_timeout,
                              f"message left incomplete for {limits.recv_timeout:g} s "
                              f"({_bytes_waiting(self._conn)} bytes of it arrived)"))
        for when, reason in deadlines:
            if now >= when:
                self._drop_client(reason)
                self._last_input = now
                return 0.0
        return max(0.0, min(when for when, _ in deadlines) - now) if deadlines else None

    def _drop_client(self, reason: str) -> None:
        """Hang up on the current client; the library sees end-of-file on its next read."""
        if self._conn is None:
            return
        self.stats["dropped_clients"] += 1
        log.warning("vfio-user: closed the client on %s: %s", self.socket_path, reason)
        _hang_up(self._conn)
        self._stalled_since = self._partial_since = None

    def _message_complete(self, conn: socket.socket, head: bytes | None) -> bool:
        """Whether the next message has arrived whole, so that the library, which reads
        a header without waiting and a body with one recv(), never sees a part of one
        (it would drop the client, or take the rest of the body for the next header).
        ``head``: what _peek showed.  A REGION_WRITE the backend answers itself
        (BYPASS_WRITE_BODY) does not wait here: its body may be larger than the socket buffer."""
        if not head:
            return True                    # nothing there, end of stream or an error: the library handles it
        if len(head) < HEADER.size:
            return False
        _, cmd, size, flags, _ = HEADER.unpack_from(head)
        if size < HEADER.size or size > LIBRARY_MAX_MSG:
            return True                    # refused by the library from its header alone
        if cmd == CMD_REGION_WRITE and not flags & F_TYPE_MASK and size - HEADER.size > BYPASS_WRITE_BODY:
            return True
        # A peek stops after the first part that carries fds: the bytes still to come are
        # counted by FIONREAD, which sees them all.
        return size <= len(head) or _bytes_waiting(conn) >= size

    @staticmethod
    def _peek(conn: socket.socket) -> bytes | None:
        """The next bytes waiting (up to _PEEK_BYTES, a small message whole), left in place;
        None when nothing is there or the connection failed."""
        try:
            return conn.recv(_PEEK_BYTES, _PEEK_FLAGS)
        except OSError:
            return None

    def _serve_messages(self, peer_gone: bool = False):
        conn = self._conn
        head = None if conn is None else self._peek(conn)      # one peek for both checks
        if conn is not None and not peer_gone and not self._message_complete(conn, head):
            if self._partial_since is None:
                self._partial_since = time.monotonic()
            return
        self._partial_since = None
        self._last_input = time.monotonic()
        if head and self._serve_large_write(conn, head):
            return
        # With ATTACH_NB one call handles at most one message; pipelined ones keep
        # the fd readable, so the next poll() returns at once for them.
        handled = self._lib.vfu_run_ctx(self._ctx)
        if handled > 0:
            self.stats["messages"] += handled
        elif handled < 0:
            err = ffi.errno
            if err == errno.ENOTCONN:
                log.info("vfio-user: client gone: disconnected from %s", self.socket_path)
            elif err not in (errno.EAGAIN, errno.EBUSY):
                self.stats["run_errors"] += 1
                log.debug("vfu_run_ctx: %s", os.strerror(err))

    def _serve_large_write(self, conn: socket.socket, head: bytes) -> bool:
        """Answer a REGION_WRITE whose body the library would short-read (see
        BYPASS_WRITE_BODY); False leaves the next message to the library.  ``head``: what
        _peek showed of it."""
        if len(head) < HEADER.size:
            return False
        msg_id, cmd, size, flags, _ = HEADER.unpack_from(head)
        if cmd != CMD_REGION_WRITE or flags & F_TYPE_MASK or size - HEADER.size <= BYPASS_WRITE_BODY:
            return False
        self.stats["large_writes"] += 1
        if size > HEADER.size + REGION_ACCESS.size + LIBRARY_MAX_DATA_XFER:
            _hang_up(conn)  # oversized: the library, too, gives up on such a client
            return True
        message = bytearray(size)
        view, got = memoryview(message), 0
        deadline = time.monotonic() + self.limits.recv_timeout
        try:
            while got < size and time.monotonic() < deadline:
                n = conn.recv_into(view[got:])
                if n == 0:
                    break
                got += n
        except OSError:
            pass
        if got < size:  # a peer that stalls mid-message loses the connection
            self._drop_client(f"message left incomplete for {self.limits.recv_timeout:g} s "
                              f"({got} bytes of it arrived)")
            return True
        offset, region, count = REGION_ACCESS.unpack_from(message, HEADER.size)
        data = bytes(view[HEADER.size + REGION_ACCESS.size:])
        err = 0
        if count != len(data) or region not in self._region_sizes or \
                offset + count > self._region_sizes[region]:
            err = errno.EINVAL
        else:
            try:
                self.device.region_write(region, offset, data)
            except BaseException as exc:
                err = _errno_of(exc)
                self.stats["callback_errors"] += 1
        if flags & F_NO_REPLY:
            return True
        if err:
            reply = HEADER.pack(msg_id, cmd, HEADER.size, F_REPLY | F_ERROR, err)
        else:
            reply = HEADER.pack(msg_id, cmd, HEADER.size + REGION_ACCESS.size, F_REPLY, 0) + \
                REGION_ACCESS.pack(offset, region, count)
        try:
            conn.sendall(reply)
        except OSError:
            _hang_up(conn)
        return True

    def _refuse_extra_client(self):
        listener = socket.socket(fileno=os.dup(self._listen_fd))
        try:
            extra, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        finally:
            listener.close()
        self.stats["refused_clients"] += 1
        extra.close()  # the second client reads EOF at once

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving, destroy the context (which removes the socket file)."""
        if self._closed:
            return
        self._request_stop()
        self._abort_attach()
        if self._loop_exited is not None and not self._loop_exited.is_set():
            if self._owner == threading.get_ident():
                # Called from a callback: the loop tears down once the library returns.
                self._teardown_on_exit = True
                return
            if not self._loop_exited.wait(self.limits.negotiate_timeout + 2 * self.limits.recv_timeout):
                # Destroying the context under a running call would be a use-after-free.
                raise OSError(errno.EBUSY, "libvfio-user owner thread did not stop; context leaked")
        self._teardown()

    def _teardown(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.device.set_interrupt_sink(None)
        finally:
            self._destroy()

    def _destroy(self):
        self._track_connection(None)
        if self._ctx != ffi.NULL:
            self._lib.vfu_destroy_ctx(self._ctx)  # also unlinks the socket
            self._ctx = ffi.NULL
        for fd in self._region_fds:
            os.close(fd)
        self._region_fds.clear()
        self._keep.clear()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bytes_waiting(conn: socket.socket) -> int:
    """Bytes queued for reading on the connection (FIONREAD); 0 when it cannot tell."""
    try:
        return struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _timeval(seconds: float) -> bytes:
    return struct.pack("@ll", int(seconds), int(seconds % 1 * 1e6))


def _hang_up(conn: socket.socket) -> None:
    """End a connection the library still holds: shut it down (the peer can send
    no more) and discard what is queued, so the library's next read sees EOF."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
        while conn.recv(1 << 16, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass


def _shutdown_fd(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return   # the library closed it meanwhile: nothing left to unblock
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
