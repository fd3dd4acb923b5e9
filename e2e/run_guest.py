#!/usr/bin/env python3
"""Host side of `make e2e`: serve a profile, boot the guest, poison a page, judge the checks.

    run_guest.py [--cache .e2e-cache] [--profile gpu-8g] [--accel tcg|kvm] [--no-device]

Needs the root that e2e/build-root.sh made.  It runs `hugepfn serve --backend python`
on a unix socket in a private temporary directory, then QEMU from the trixie root
(chroot in a private mount namespace that bind-mounts that directory to
/run/hugepfn-e2e, so the socket path stays short and nothing stays mounted) with the
device attached as vfio-user-pci and guest RAM on memory-backend-memfd share=on.
The guest's /init (e2e/guest-init.sh) prints "E2E PASS|FAIL <check>: ..." lines on
the serial console; when it prints READY-FOR-INJECT this side runs `hugepfn inject`.

Every check prints one PASS or FAIL line; a check the guest never reported is a
FAIL; exit status 1 when anything failed.  All waits have deadlines.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUEST_DIR = "/run/hugepfn-e2e"          # where the socket directory appears inside the root
CHECK_LINE = re.compile(r"E2E (PASS|FAIL) ([\w-]+): (.*)")
GUEST_CHECKS = ("boot", "find-device", "bars", "identity", "bar-memory", "msix-setup",
                "error-queue", "interrupt", "error-record", "error-ack")
RECORD_LINE = re.compile(r"E2E RECORD((?: 0x[0-9A-Fa-f]{8})+)")


class Report:
    """Collects PASS/FAIL lines; every check is printed the moment it is known."""

    def __init__(self) -> None:
        self.results: dict[str, bool] = {}

    def record(self, ok: bool, name: str, detail: str) -> None:
        self.results[name] = ok and self.results.get(name, True)
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.results.items() if not ok]


def say(message: str) -> None:
    print(f"e2e: {message}", flush=True)


def hugepfn_program() -> str:
    """The `hugepfn` console script of the interpreter running us (the project's .venv),
    unless HUGEPFN_E2E_PROGRAM names another build."""
    if os.environ.get("HUGEPFN_E2E_PROGRAM"):
        return os.environ["HUGEPFN_E2E_PROGRAM"]
    beside = Path(sys.executable).with_name("hugepfn")
    return str(beside) if beside.exists() else (shutil.which("hugepfn") or "hugepfn")


def stop(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """End a process group we started: SIGTERM, then SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_socket(path: Path, server: subprocess.Popen, timeout: float) -> str | None:
    """None once the server listens on `path`, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"hugepfn serve exited with status {server.returncode}"
        if path.is_socket():
            return None
        time.sleep(0.1)
    return f"no socket at {path} after {timeout:.0f} s"


class Guest:
    """QEMU from the root, its serial console on a pipe we read line by line."""

    def __init__(self, root: Path, share_dir: Path, argv: list[str], log: Path) -> None:
        mount_and_chroot = (
            'root=$1; share=$2; shift 2; '
            'mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && '
            'mount --rbind /dev "$root/dev" && mkdir -p "$root' + GUEST_DIR + '" && '
            'mount --bind "$share" "$root' + GUEST_DIR + '" && exec chroot "$root" "$@"')
        command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                   mount_and_chroot, "sh", str(root), str(share_dir), *argv]
        self.log = open(log, "w", encoding="utf-8", errors="replace")
        self.log.write("# " + " ".join(argv) + "\n")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.pending = b""
        self.eof = False

    def lines(self, deadline: float):
        """Yield console lines until EOF or the monotonic `deadline`."""
        while not self.eof and time.monotonic() < deadline:
            if not self.selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
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

    def close(self) -> None:
        stop(self.process)
        self.selector.close()
        self.log.close()


def device_facts(profile: str) -> dict[str, str]:
    """What the guest checks against, taken from the device model (never typed in here)."""
    sys.path.insert(0, str(HERE))
    from device_facts import guest_facts
    return guest_facts(profile)


def check_record(line: str, profile: str, report: Report) -> None:
    """Decode the record the guest copied from ERRQ_WINDOW with the device's own parser."""
    import struct
    from device_facts import expected_record
    from hugepfn.device.cper import parse_record

    words = [int(word, 16) for word in line.split()]
    raw = struct.pack(f"<{len(words)}I", *words)
    try:
        record = parse_record(raw)
    except Exception as exc:  # a malformed record is the failure being reported
        report.record(False, "record-decode", f"{len(raw)} bytes from the guest do not parse: {exc}")
        return
    want = expected_record(profile)
    got = (record.bar, record.bar_offset, record.length, record.physical_addr, record.granularity)
    expected = (want.bar, want.bar_offset, want.length, want.physical_addr, want.granularity)
    names = ("bar", "bar_offset", "length", "physical_addr", "granularity")
    detail = ", ".join(f"{n}={v:#x}" for n, v in zip(names, got))
    wrong = [f"{n}={g:#x} (want {w:#x})" for n, g, w in zip(names, got, expected) if g != w]
    report.record(not wrong, "record-decode",
                  f"CPER memory error, sequence {record.sequence}: {detail}" if not wrong
                  else "; ".join(wrong))


def qemu_argv(kernel: str, initrd: str, accel: str, memory_mb: int, socket: str | None) -> list[str]:
    argv = [
        "qemu-system-x86_64", "-machine", "q35", "-accel", accel, "-cpu", "max", "-smp", "1",
        "-m", f"{memory_mb}M",
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
        "-machine", "memory-backend=mem",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-monitor", "none", "-no-reboot",
        "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
    ]
    if socket:
        argv += ["-device",
                 '{"driver":"vfio-user-pci","id":"gpu0","socket":{"path":"%s","type":"unix"}}' % socket]
    return argv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Boot the e2e guest against a served hugepfn device.")
    parser.add_argument("--cache", default=str(REPO / ".e2e-cache"), help="where build-root.sh put the root")
    parser.add_argument("--profile", default="gpu-8g")
    parser.add_argument("--accel", default=os.environ.get("HUGEPFN_E2E_ACCEL", "tcg"), choices=("tcg", "kvm"))
    parser.add_argument("--memory", type=int, default=512, help="guest RAM in MiB")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("HUGEPFN_E2E_TIMEOUT", 420)),
                        help="seconds for the whole guest run")
    parser.add_argument("--inject-timeout", type=int, default=90,
                        help="seconds the guest polls the error queue after READY-FOR-INJECT")
    parser.add_argument("--no-device", action="store_true",
                        help="boot without a device (checks only that the root and guest work)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = Report()
    if os.geteuid() != 0:
        print("e2e: the guest runs in a chroot and a private mount namespace: run as root", file=sys.stderr)
        return 1
    cache = Path(args.cache).resolve()
    root = cache / "trixie-root"
    if not (root / ".hugepfn-root-complete").exists():
        print(f"e2e: no trixie root in {root}: run e2e/build-root.sh {cache} first (make e2e does)",
              file=sys.stderr)
        return 1
    kernels = sorted(glob.glob(str(root / "boot" / "vmlinuz-*")))
    if not kernels:
        print(f"e2e: no kernel in {root}/boot", file=sys.stderr)
        return 1
    kernel = "/boot/" + os.path.basename(kernels[-1])
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"root: {(root / '.hugepfn-root-complete').read_text().strip()}")

    facts: dict[str, str] = {}
    expected = GUEST_CHECKS
    if args.no_device:
        expected = ("boot",)
    else:
        try:
            facts = device_facts(args.profile)
        except Exception as exc:  # the device model is another part of the project; say what broke
            report.record(False, "device-model", f"cannot read the register map of {args.profile}: {exc}")
            return 1
    facts.setdefault("INJECT_TIMEOUT", str(args.inject_timeout))

    server = guest = None
    share = Path(tempfile.mkdtemp(prefix="hugepfn-e2e-"))
    try:
        initrd = share / "initramfs.gz"
        build = [sys.executable, str(HERE / "mkinitramfs.py"), str(initrd),
                 "--busybox", str(root / "usr" / "bin" / "busybox"), "--init", str(HERE / "guest-init.sh")]
        for key, value in facts.items():
            build += ["--set", f"{key}={value}"]
        subprocess.run(build, check=True, timeout=60)

        socket_host = share / "gpu.sock"
        if not args.no_device:
            serve = [hugepfn_program(), "serve", "--profile", args.profile,
                     "--socket", str(socket_host), "--backend", "python"]
            serve_log = open(logs / "serve.log", "w")
            server = subprocess.Popen(serve, stdin=subprocess.DEVNULL, stdout=serve_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
            problem = wait_for_socket(socket_host, server, timeout=30)
            report.record(problem is None, "serve",
                          problem or f"{args.profile} served on {socket_host} (python backend)")
            if problem:
                return 1

        argv_qemu = qemu_argv(kernel, f"{GUEST_DIR}/initramfs.gz", args.accel, args.memory,
                              None if args.no_device else f"{GUEST_DIR}/gpu.sock")
        say(f"booting {kernel} under {args.accel} (console log: {logs / 'console.log'})")
        guest = Guest(root, share, argv_qemu, logs / "console.log")
        deadline = time.monotonic() + args.timeout
        seen_done = False
        for line in guest.lines(deadline):
            match = CHECK_LINE.search(line)
            record = RECORD_LINE.search(line)
            if record:
                check_record(record[1], args.profile, report)
            elif match:
                report.record(match[1] == "PASS", match[2], match[3])
            elif "READY-FOR-INJECT" in line:
                if not inject(args, facts, socket_host, report, logs):
                    break   # nothing left for the guest to see; do not wait out its poll
            elif "E2E DONE" in line:
                seen_done = True
            elif "Unrecoverable error detected" in line:
                # QEMU's answer to the vfio ERR irq: the VM is stopped for good, stop waiting.
                report.record(False, "vm-running", f"QEMU stopped the VM: {line.strip()}")
                break
            elif "qemu-system" in line or "vfio-user" in line or "Kernel panic" in line:
                say(f"console: {line}")
        try:
            status = None if "vm-running" in report.results or report.results.get("inject") is False else \
                guest.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None
        if "vm-running" in report.results:
            report.record(False, "guest-exit", "QEMU killed after it stopped the VM")
        elif report.results.get("inject") is False:
            report.record(False, "guest-exit", "QEMU killed: no poison was injected")
        elif status is None:
            report.record(False, "guest-exit", f"guest still running after {args.timeout:.0f} s; killed")
        else:
            report.record(status == 0 and seen_done, "guest-exit",
                          f"QEMU exited with status {status}" + ("" if seen_done else " before the guest finished"))
        if not args.no_device and "record-decode" not in report.results:
            report.record(False, "record-decode", "the guest never printed the error record")
        for name in expected:
            if name not in report.results:
                report.record(False, name, "never reported by the guest")
        if server is not None:
            alive = server.poll() is None
            report.record(alive, "serve-alive",
                          "server still running after the guest" if alive
                          else f"server exited with status {server.returncode} (log: {logs / 'serve.log'})")
    finally:
        if guest is not None:
            guest.close()
        stop(server)
        shutil.rmtree(share, ignore_errors=True)
    failed = report.failed
    total = len(report.results)
    say(f"{total - len(failed)} of {total} checks passed in {time.monotonic() - started:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def inject(args: argparse.Namespace, facts: dict[str, str], socket: Path, report: Report, logs: Path) -> bool:
    command = [hugepfn_program(), "inject", "--socket", str(socket), "--bar", facts["POISON_BAR"],
               "--offset", facts["POISON_OFFSET"], "--granularity", facts["POISON_GRANULARITY"]]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        report.record(False, "inject", f"hugepfn {' '.join(command[1:])} did not finish in 60 s")
        return False
    (logs / "inject.log").write_text(done.stdout + done.stderr)
    ok = done.returncode == 0
    # success: what inject says first; failure: its last line, where the error is
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()] or ["no output"]
    report.record(ok, "inject", f"hugepfn {' '.join(command[1:])} -> exit {done.returncode}: "
                                f"{said[0] if ok else said[-1]}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
