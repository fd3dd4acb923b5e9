"""libvfio-user's shared library: found at run time, vetted, bound with cffi in ABI mode.

The library is looked for in ``HUGEPFN_LIBVFIO_USER``, then the dynamic linker's search path,
then a few install prefixes; nothing is compiled.  It must be a build at or after commit 850ded8
(PR #832): older builds report BARs of 4 GiB and more as size 0, which breaks every large BAR
this project serves.  ``is_available()`` says whether (and where, or why not) in one line.
"""
from __future__ import annotations

import ctypes.util
import errno
import os
import tempfile
import threading

from cffi import FFI

from hugepfn.device.vfio_user import libvfio_user_cdef as C

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
libc = ffi.dlopen(None)


class LibvfioUserUnavailable(OSError):
    """libvfio-user is missing, unloadable or too old for 64-bit BARs."""


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


def library():
    """The vetted library, or LibvfioUserUnavailable with the one-line reason."""
    lib, reason = _load()
    if lib is None:
        raise LibvfioUserUnavailable(errno.ENOENT, reason)
    return lib
