"""What an arm64 guest needs besides the kernel: QEMU for arm, an arm64 busybox, the real
nvgrace-gpu module and a device tree that gives it its firmware properties.

Debian's arm64 kernels leave NVGRACE_GPU_VFIO_PCI unset, so the module is built at crosscheck
time from Debian's own source package (linux-source-SERIES: drivers/vfio/pci/nvgrace-gpu/main.c)
against Debian's headers of the same build, with the cross compiler the kernel was built with
(sid's gcc-16-aarch64-linux-gnu), inside a cached sid root (debootstrap).  Nothing of it is
part of the repository; the cache keeps the .ko per kernel release.

nvgrace-gpu reads its device memory from firmware: ACPI _DSD on real machines, here device
tree properties (device_property_read_u64 reads either) on a node for the GPU's PCI function
under the virt machine's PCIe host bridge.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .kernels import CachedKernel, KernelError, PrivateApt, DEB_ARCH

SID_PACKAGES = ("gcc-16-aarch64-linux-gnu", "make", "libc6-dev", "libelf1t64", "dwarves")
NVGRACE_SOURCE = "drivers/vfio/pci/nvgrace-gpu/main.c"
NVGRACE_MODULE = "nvgrace-gpu-vfio-pci"
PCIE_NODE = "/pcie@10000000"            # QEMU virt's generic PCIe host bridge


def _in_root(root: Path, *argv: str, log: Path) -> None:
    script = ('root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" '
              '&& exec chroot "$root" "$@"')
    with open(log, "a") as out:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
                               "sh", str(root), *argv], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise KernelError(f"{' '.join(argv[:4])} in {root.name} failed (log: {log})")


def ensure_qemu_arm(root: Path, log: Path) -> None:
    """qemu-system-aarch64 in the trixie root (the same backport as qemu-system-x86)."""
    if (root / "usr" / "bin" / "qemu-system-aarch64").exists():
        return
    _in_root(root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", "--no-install-recommends",
             "-t", "trixie-backports", "install", "qemu-system-arm", log=log)


def _extract(apt: PrivateApt, packages: list[str], into: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hugepfn-deb-") as tmp:
        for deb in apt.download(packages, Path(tmp)):
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
            if done.returncode:
                raise KernelError(f"dpkg-deb -x {deb.name}: {done.stderr.strip()[-200:]}")


def ensure_busybox(cache: Path, mirror: str) -> Path:
    out = cache / "arm64" / "busybox"
    if out.exists():
        return out
    apt = PrivateApt(cache / "apt", mirror, tuple(DEB_ARCH.values()))
    with tempfile.TemporaryDirectory(prefix="hugepfn-bb-") as tmp:
        _extract(apt, ["busybox-static:arm64/trixie"], Path(tmp))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "usr" / "bin" / "busybox", out)
    return out


def ensure_sid_root(cache: Path, log: Path) -> Path:
    root = cache / "sid-root"
    stamp = root / ".hugepfn-sid-complete"
    if stamp.exists():
        return root
    from .mirror import debian_mirror
    partial = cache / "sid-root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    keyring = cache / "apt" / "etc" / "keyring.gpg"
    with open(log, "a") as out:
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--keyring={keyring}", "sid", str(partial),
                               debian_mirror()], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise KernelError(f"debootstrap sid failed (log: {log})")
    (partial / "etc" / "apt" / "sources.list").write_text(f"deb {debian_mirror()} sid main\n")
    # the archive here is a snapshot: its Release files are past their Valid-Until
    _in_root(partial, "apt-get", "-o", "Acquire::Check-Valid-Until=false", "-q", "update", log=log)
    _in_root(partial, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", "--no-install-recommends",
             "install", *SID_PACKAGES, log=log)
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    stamp.touch()
    return root


def ensure_nvgrace_module(kernel: CachedKernel, cache: Path, mirror: str, log: Path) -> Path:
    """nvgrace-gpu-vfio-pci.ko for ``kernel`` (arm64), built once from Debian's source."""
    out = cache / "nvgrace" / kernel.release / f"{NVGRACE_MODULE}.ko"
    if out.exists():
        return out
    series = kernel.series
    root = ensure_sid_root(cache, log)
    apt = PrivateApt(cache / "apt", mirror, tuple(DEB_ARCH.values()))
    version_tag = kernel.release.removesuffix("-arm64")          # 7.2.13+deb14
    headers = root / "usr" / "src" / f"linux-headers-{kernel.release}"
    if not headers.exists():
        _extract(apt, [f"linux-headers-{kernel.release}:arm64", f"linux-headers-{version_tag}-common",
                       f"linux-kbuild-{version_tag}:amd64"], root)
    build = root / "build" / "nvgrace"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="hugepfn-src-") as tmp:
        _extract(apt, [f"linux-source-{series}"], Path(tmp))
        tarball = next(Path(tmp).glob("usr/src/linux-source-*.tar.*"), None)
        if tarball is None:
            raise KernelError(f"linux-source-{series} holds no source tarball")
        member = f"linux-source-{series}/{NVGRACE_SOURCE}"
        done = subprocess.run(["tar", "-xf", str(tarball), "-O", member], capture_output=True)
        if done.returncode or not done.stdout:
            raise KernelError(f"{member} is not in {tarball.name}")
        (build / "main.c").write_bytes(done.stdout)
    (build / "Kbuild").write_text(f"obj-m += {NVGRACE_MODULE}.o\n{NVGRACE_MODULE}-y := main.o\n")
    _in_root(root, "make", "-C", f"/usr/src/linux-headers-{kernel.release}", "M=/build/nvgrace", "ARCH=arm64",
             "CROSS_COMPILE=aarch64-linux-gnu-", "CC=aarch64-linux-gnu-gcc-16", "modules", log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build / f"{NVGRACE_MODULE}.ko", out)
    return out


def device_tree(root: Path, share_in_root: str, share: Path, qemu_machine_argv: list[str],
                gpus: dict[int, tuple[int, int]], log: Path) -> Path:
    """virt's DTB (QEMU's dumpdtb) with a node per nvgrace GPU: ``gpus`` maps a PCI slot to
    (nvidia,gpu-mem-base-pa, nvidia,gpu-mem-size)."""
    from .vm import run_in_root
    dtb = share / "virt.dtb"
    argv = list(qemu_machine_argv)
    i = argv.index("-machine")
    argv[i + 1] += f",dumpdtb={share_in_root}/virt.dtb"
    run_in_root(root, share, argv, log)
    for slot, (base, size) in gpus.items():
        node = f"{PCIE_NODE}/gpu@{slot:x},0"
        for cmd in (["fdtput", "-c", str(dtb), node],
                    ["fdtput", "-t", "x", str(dtb), node, "reg", f"{slot << 11:x}", "0", "0", "0", "0"],
                    ["fdtput", "-t", "x", str(dtb), node, "nvidia,gpu-mem-base-pa", f"{base >> 32:x}",
                     f"{base & 0xFFFFFFFF:x}"],
                    ["fdtput", "-t", "x", str(dtb), node, "nvidia,gpu-mem-size", f"{size >> 32:x}",
                     f"{size & 0xFFFFFFFF:x}"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise KernelError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip()} "
                                  "(Debian: apt-get install device-tree-compiler)")
    return dtb
