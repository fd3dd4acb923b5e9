"""One guest boot: serve the devices, build the initramfs, run QEMU, collect the probe's output.

``boot(request)`` serves each planned device (the project's own vfio-user server, in this
process), writes the initramfs (busybox, /init, the probe built here, the VFIO modules of
the kernel, the step files), boots the guest and returns what it said, split per scenario,
plus the first Oops when the kernel crashed.  All waits have deadlines.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cpio import Newc
from .kernels import CachedKernel
from .plan import Plan, PlannedDevice
from .vm import SHARE_IN_ROOT, Guest, GuestDevice, qemu_argv

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"
CROSS_GCC = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
DATA_TTY = {"x86_64": "/dev/ttyS1", "arm64": "/dev/ttyAMA1"}
OOPS_START = re.compile(r"(BUG: |Oops|kernel BUG at|general protection fault|Unable to handle kernel)")


class BootError(RuntimeError):
    """The guest could not be run at all (one line)."""


@dataclass
class Crash:
    scenario: str | None          # the scenario running when the kernel crashed
    first_line: str               # the first BUG:/Oops line
    trace: list[str]              # the call trace as printed


@dataclass
class BootResult:
    release: str | None = None
    kprobes: dict[str, bool] = field(default_factory=dict)
    scenarios: dict[str, list[str]] = field(default_factory=dict)   # name -> the probe's lines
    devices: dict[str, list[str]] = field(default_factory=dict)     # name -> XC dev/bar lines
    finished: list[str] = field(default_factory=list)
    crash: Crash | None = None
    console: Path | None = None
    seconds: float = 0.0
    done: bool = False
    placement: list[str] = field(default_factory=list)     # XC dev/bar lines printed at boot


def build_probe(arch: str, cache: Path) -> Path:
    """The static probe for ``arch``, built with the host's (cross) gcc; cached by source hash."""
    source = GUEST_DIR / "probe.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache / "probe" / f"probe-{arch}-{digest}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gcc = CROSS_GCC[arch]
    if shutil.which(gcc) is None:
        raise BootError(f"{gcc} is not installed (Debian: apt-get install "
                        f"{'gcc' if arch == 'x86_64' else 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross'})")
    tmp = out.with_suffix(".tmp")
    done = subprocess.run([gcc, "-static", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(source)],
                          capture_output=True, text=True)
    if done.returncode:
        raise BootError(f"building the probe failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    tmp.replace(out)
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:#x}" if value > 9 else str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_toml(profile: dict) -> str:
    """A synthesized profile as TOML (scalars, tables of scalars, and the [[bar]] list)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in profile.items() if not isinstance(v, (dict, list))]
    for key, value in profile.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
    for bar in profile.get("bar", []):
        lines.append("\n[[bar]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in bar.items()]
    return "\n".join(lines) + "\n"


class ServedSet:
    """The devices of one boot, served by the project's python vfio-user engine."""

    def __init__(self, devices: list[PlannedDevice], directory: Path) -> None:
        from hugepfn.device.gpu import GpuDevice
        from hugepfn.device.vfio_user.backends import select_backend

        self.parts: list = []
        choice, _why = select_backend("python")
        try:
            for dev in devices:
                if "source" in dev.profile:
                    profile = dev.profile["name"]
                else:
                    path = directory / f"profile-{dev.slot:02x}.toml"
                    path.write_text(profile_toml(dev.profile))
                    profile = str(path)
                device = GpuDevice.from_profile(profile)
                self.parts.append(device)
                server = choice.Server(device, directory / f"dev-{dev.slot:02x}.sock")
                server.start()
                self.parts.append(server)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in reversed(self.parts):
            try:
                part.close()
            except OSError:
                pass
        self.parts.clear()


# modules loaded once at boot and kept (the IOMMU the devices' groups hang off)
BOOT_MODULES = ("virtio_iommu",)


def _initramfs(kernel: CachedKernel, busybox: Path, probe: Path, plans: list[Plan],
               devices: list[PlannedDevice], kprobes: list[str], dyndbg: list[str],
               extra_modules: list[Path]) -> bytes:
    archive = Newc()
    for directory in ("bin", "sbin", "etc", "etc/xc", "etc/xc/scenarios", "dev", "proc", "sys", "tmp",
                      "lib", "lib/xc"):
        archive.directory(directory)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", (GUEST_DIR / "init.sh").read_bytes(), 0o755)
    archive.file("probe", probe.read_bytes(), 0o755)
    modules = kernel.module_order if kernel.has_vfio else []
    for name in modules:
        archive.file(f"lib/xc/{name}.ko", kernel.module(name).read_bytes())
    for path in extra_modules:
        archive.file(f"lib/xc/{path.name}", path.read_bytes())
    stack = [m for m in modules if m not in BOOT_MODULES] + [p.name[:-3] for p in extra_modules]
    archive.file("etc/xc/boot_modules", (" ".join(m for m in modules if m in BOOT_MODULES) + "\n").encode())
    archive.file("etc/xc/modules", (" ".join(stack) + "\n").encode())
    archive.file("etc/xc/devices", "".join(f"{d.slot} {d.bdf} {d.driver if modules else 'none'}\n"
                                           for d in devices).encode())
    archive.file("etc/xc/kprobes", ("\n".join(kprobes) + "\n").encode())
    archive.file("etc/xc/dyndbg", (" ".join(dyndbg) + "\n").encode())
    archive.file("etc/xc/data_tty", (DATA_TTY[kernel.arch] + "\n").encode())
    for i, p in enumerate(plans):
        archive.file(f"etc/xc/scenarios/{i:03d}-{p.name}.steps", p.text().encode())
    return archive.finish()


def _crash_from_console(lines: list[str]) -> tuple[str, list[str]] | None:
    for i, line in enumerate(lines):
        text = re.sub(r"^\[\s*[\d.]+\]\s*", "", line)
        if OOPS_START.search(text):
            trace = []
            for later in lines[i + 1:]:
                t = re.sub(r"^\[\s*[\d.]+\]\s*", "", later)
                if "Kernel panic" in t or "---[ end trace" in t:
                    break
                trace.append(t)
            return text, trace
    return None


def boot(kernel: CachedKernel, root: Path, busybox: Path, plans: list[Plan], devices: list[PlannedDevice],
         kprobes: list[str], dyndbg: list[str], cache: Path, logs: Path, timeout: float = 1500.0,
         memory_mb: int = 512, boot_number: int = 1, extra_modules: list[Path] | None = None,
         dtb_gpus: dict[int, tuple[int, int]] | None = None) -> BootResult:
    """Run ``plans`` (in order) in one guest of ``kernel``; see the module docstring."""
    started = time.monotonic()
    result = BootResult()
    probe = build_probe(kernel.arch, cache)
    share = Path(tempfile.mkdtemp(prefix="hugepfn-xc-"))
    served = None
    guest = None
    console: list[str] = []
    try:
        served = ServedSet(devices, share)
        shutil.copyfile(kernel.image, share / "vmlinuz")
        (share / "initrd.gz").write_bytes(_initramfs(kernel, busybox, probe, plans, devices, kprobes, dyndbg,
                                                      list(extra_modules or [])))
        data = share / "data.txt"
        data.touch()
        logs.mkdir(parents=True, exist_ok=True)
        dtb = None
        if dtb_gpus:
            from .arm64 import device_tree
            bare = qemu_argv(kernel.arch, f"{SHARE_IN_ROOT}/vmlinuz", f"{SHARE_IN_ROOT}/initrd.gz",
                             f"{SHARE_IN_ROOT}/data.txt", [], memory_mb)
            device_tree(root, SHARE_IN_ROOT, share, bare, dtb_gpus, logs / "dtb.log")
            dtb = f"{SHARE_IN_ROOT}/virt.dtb"
        argv = qemu_argv(kernel.arch, f"{SHARE_IN_ROOT}/vmlinuz", f"{SHARE_IN_ROOT}/initrd.gz",
                         f"{SHARE_IN_ROOT}/data.txt",
                         [GuestDevice(d.slot, f"{SHARE_IN_ROOT}/dev-{d.slot:02x}.sock") for d in devices],
                         memory_mb, dtb=dtb)
        result.console = logs / f"console-{kernel.release}-{boot_number}.log"
        guest = Guest(root, share, argv, result.console)
        deadline = time.monotonic() + timeout
        for line in guest.lines(deadline):
            if line is None:
                if _data_done(data):
                    break
                continue
            console.append(line)
            if "Kernel panic" in line or "reboot: " in line or "Rebooting in" in line:
                break
        guest.close()
        guest = None
        _parse_data(data.read_text(errors="replace"), result)
        crash = _crash_from_console(console)
        if crash is not None:
            result.crash = Crash(_running(result), crash[0], crash[1])
        shutil.copyfile(data, logs / f"data-{kernel.release}-{boot_number}.txt")
    finally:
        if guest is not None:
            guest.close()
        if served is not None:
            served.close()
        shutil.rmtree(share, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _data_done(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64))
            return b"XC done" in handle.read()
    except OSError:
        return False


def _running(result: BootResult) -> str | None:
    unfinished = [name for name in result.scenarios if name not in result.finished]
    return unfinished[-1] if unfinished else None


def _parse_data(text: str, result: BootResult) -> None:
    current: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("XC "):
            words = line.split(" ", 3)
            what = words[1] if len(words) > 1 else ""
            if what == "kernel":
                result.release = words[2] if len(words) > 2 else None
            elif what == "kprobe":
                result.kprobes[line.split(" ", 3)[3]] = words[2] == "OK"
            elif what == "begin":
                current = words[2].split("-", 1)[1] if "-" in words[2] else words[2]
                result.scenarios[current] = []
                result.devices[current] = []
            elif what == "end":
                if current is not None:
                    result.finished.append(current)
                current = None
            elif what in ("dev", "bar") and current is not None:
                result.devices[current].append(line)
            elif what in ("dev", "bar"):
                result.placement.append(line)           # reported once at boot, before any scenario
            elif what == "done":
                result.done = True
        elif current is not None:
            result.scenarios[current].append(line)
