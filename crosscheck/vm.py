"""A QEMU guest run from the cached Debian root: the command line, the chroot, the consoles.

QEMU 11 (with vfio-user-pci) needs a newer glibc than this host has, so it runs from the
trixie root that e2e/build-root.sh builds, in a private mount namespace (nothing stays
mounted) with one host directory bind-mounted at SHARE_IN_ROOT: the device sockets, the
kernel, the initramfs and the probe's output file live there.

The guest prints kernel messages on ttyS0 (read line by line here, for Oops detection) and
the probe's data on ttyS1 (a file in the shared directory).
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SHARE_IN_ROOT = "/run/hugepfn-xc"


@dataclass(frozen=True)
class GuestDevice:
    slot: int
    socket: str          # path inside the root


def qemu_argv(arch: str, kernel: str, initrd: str, data_out: str, devices: list[GuestDevice],
              memory_mb: int = 512, append: str = "", dtb: str | None = None) -> list[str]:
    """QEMU's command line (paths as seen inside the root)."""
    console = "ttyS0" if arch == "x86_64" else "ttyAMA0"
    cmdline = (f"console={console} panic=-1 oops=panic loglevel=4 rdinit=/init "
               f"transparent_hugepage=always {append}").strip()
    if arch == "x86_64":
        argv = ["qemu-system-x86_64", "-machine", "q35,kernel-irqchip=split", "-accel", "tcg",
                "-cpu", "max", "-smp", "1", "-m", f"{memory_mb}M",
                # the vIOMMU gives each device an IOMMU group (Debian kernels lack VFIO_NOIOMMU);
                # it must come before the devices it translates for
                "-device", "intel-iommu,caching-mode=on,intremap=on"]
        cmdline += " intel_iommu=on"
        serial = ["-serial", "stdio", "-serial", f"file:{data_out}"]
    else:
        argv = ["qemu-system-aarch64", "-machine", "virt,gic-version=3", "-accel", "tcg",
                "-cpu", "max,pauth-impdef=on", "-smp", "1", "-m", f"{memory_mb}M",
                # the SMMUv3 model refuses vfio-user devices; virtio-iommu gives them groups
                "-device", "virtio-iommu-pci,addr=0x1"]
        serial = ["-serial", "stdio", "-serial", f"file:{data_out}"]
        if dtb:
            argv += ["-dtb", dtb]
    argv += ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
             "-machine", "memory-backend=mem",
             "-nodefaults", "-no-user-config", "-display", "none", *serial,
             "-monitor", "none", "-no-reboot",
             "-kernel", kernel, "-initrd", initrd, "-append", cmdline]
    for dev in devices:
        argv += ["-device", '{"driver":"vfio-user-pci","id":"xc%d","addr":"0x%x",'
                            '"socket":{"path":"%s","type":"unix"}}' % (dev.slot, dev.slot, dev.socket)]
    return argv


def _chroot_command(root: Path, share: Path, argv: list[str], mount_at: str = SHARE_IN_ROOT) -> list[str]:
    script = ('root=$1; share=$2; at=$3; shift 3; '
              'mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && '
              'mount --rbind /dev "$root/dev" && mkdir -p "$root$at" && '
              'mount --bind "$share" "$root$at" && exec chroot "$root" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            "sh", str(root), str(share), mount_at, *argv]


def stop_group(process: subprocess.Popen | None, grace: float = 5.0) -> int | None:
    """End a process group we started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process is None:
        return None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.poll()


def run_in_root(root: Path, share: Path, argv: list[str], log: Path, timeout: float = 120) -> None:
    """Run ``argv`` in the root (the share directory mounted) to completion."""
    with open(log, "a") as out:
        done = subprocess.run(_chroot_command(root, share, argv), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} failed in the root (log: {log})")


class Guest:
    """QEMU in the root (``share`` mounted at ``mount_at``); ``lines(deadline)`` yields its
    console output line by line, and with ``ticks`` a None each idle second (the caller
    can look at other output meanwhile)."""

    def __init__(self, root: Path, share: Path, argv: list[str], log: Path, mount_at: str = SHARE_IN_ROOT,
                 ticks: bool = True) -> None:
        command = _chroot_command(root, share, argv, mount_at)
        self.ticks = ticks
        self.log = open(log, "w", encoding="utf-8", errors="replace")
        self.log.write("# " + " ".join(argv) + "\n")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.pending = b""
        self.eof = False

    def lines(self, deadline: float):
        while not self.eof and time.monotonic() < deadline:
            if not self.selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                if self.ticks:
                    yield None
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                self.eof = True
                chunk = b"\n"
            self.pending += chunk
            *complete, self.pending = self.pending.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line:
                    self.log.write(line + "\n")
                    self.log.flush()
                    yield line

    def close(self, grace: float = 5.0) -> int | None:
        status = stop_group(self.process, grace)
        self.selector.close()
        self.log.close()
        return status
