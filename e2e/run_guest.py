#!/usr/bin/env python3
"""Host side of `make e2e`: serve a profile, boot a guest against it, poison a page, judge.

    run_guest.py [--cache .e2e-cache]                       # the runs `make e2e` does (RUNS)
    run_guest.py --profile gpu-1t [--attach fd|socket-path] [--accel tcg|kvm] [--no-device]

Needs the root that e2e/build-root.sh made.  Each run serves one profile with `hugepfn serve
--backend python` in a private temporary directory, attached one of two ways:
``socket-path`` (the server creates the socket: ``--socket-path=PATH``) or ``fd`` (this
script binds and listens, as a manager would, and hands the socket over with ``--fd=N``);
the server says it is ready on ``--ready-fd``.  QEMU then runs from the trixie root (chroot
in a private mount namespace that bind-mounts that directory to /run/hugepfn-e2e, so the
socket path stays short and nothing stays mounted) with the device as vfio-user-pci, guest
RAM on memory-backend-memfd share=on, and ``-cpu max,phys-bits=N`` with the N the profile's
64-bit BARs need (hugepfn.device.qemu_options).  The guest's /init (e2e/guest-init.sh)
prints "E2E PASS|FAIL <check>: ..." lines on the serial console; when it prints its BAR
placement this side asks the device (`hugepfn lspci --socket`) where the BAR was
programmed, and when it prints READY-FOR-INJECT this side runs `hugepfn inject`.

Every check prints one PASS or FAIL line.  A check the guest never reached because it
stopped after a failure is one NOT-REACHED line (the failure is reported once, where it
happened); a check missing for any other reason is a FAIL.  Exit status 1 when anything
failed.  All waits have deadlines.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hugepfn.crosscheck.vm import Guest as _Guest, stop_group

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUEST_DIR = "/run/hugepfn-e2e"          # where the socket directory appears inside the root
CHECK_LINE = re.compile(r"E2E (PASS|FAIL) ([\w-]+): (.*)")
GUEST_CHECKS = ("boot", "find-device", "bars", "bar-window", "identity", "bar-memory", "bar-last-page",
                "msix-setup", "error-queue", "interrupt", "error-record", "error-ack")
RECORD_LINE = re.compile(r"E2E RECORD((?: 0x[0-9A-Fa-f]{8})+)")
BAR_LINE = re.compile(r"E2E BAR (\d+) (0x[0-9a-fA-F]+) (0x[0-9a-fA-F]+)")
ATTACH_MODES = ("socket-path", "fd")
# What `make e2e` runs: the full checks on gpu-8g, and the huge-BAR profiles, each way of attaching.
RUNS = (("gpu-8g", "socket-path"), ("gpu-1t", "fd"), ("nvgrace", "socket-path"))


class Report:
    """Collects PASS/FAIL lines; every check is printed the moment it is known."""

    def __init__(self) -> None:
        self.results: dict[str, bool] = {}
        self.not_reached: list[str] = []

    def record(self, ok: bool, name: str, detail: str) -> None:
        self.results[name] = ok and self.results.get(name, True)
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def missing(self, names, guest_gave_up: bool) -> None:
        """Checks nobody reported: not reached after a reported failure, else failed."""
        names = [name for name in names if name not in self.results]
        if not names:
            return
        if guest_gave_up and self.failed:
            self.not_reached += names
            print(f"NOT-REACHED {', '.join(names)}: the run stopped after FAIL {', '.join(self.failed)}",
                  flush=True)
            return
        for name in names:
            self.record(False, name, "never reported by the guest")

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
    stop_group(process, grace)


def wait_ready(ready_r: int, server: subprocess.Popen, timeout: float) -> str | None:
    """None once the server wrote READY=1 on its --ready-fd, else why not."""
    deadline = time.monotonic() + timeout
    got = b""
    with selectors.DefaultSelector() as sel:
        sel.register(ready_r, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(ready_r, 64)
            if not chunk:
                server.wait(timeout=10)
                return f"hugepfn serve exited with status {server.returncode} before it was ready"
            got += chunk
            if got == b"READY=1\n":
                return None
    return f"hugepfn serve not ready after {timeout:.0f} s (read {got!r} from --ready-fd)"


class Guest(_Guest):
    """QEMU from the root, the socket directory at GUEST_DIR, its console read line by line."""

    def __init__(self, root: Path, share_dir: Path, argv: list[str], log: Path) -> None:
        super().__init__(root, share_dir, argv, log, mount_at=GUEST_DIR, ticks=False)


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


def qemu_argv(kernel: str, initrd: str, accel: str, memory_mb: int, socket: str | None,
              cpu: str = "max") -> list[str]:
    argv = [
        "qemu-system-x86_64", "-machine", "q35", "-accel", accel, "-cpu", cpu, "-smp", "1",
        "-m", f"{memory_mb}M",
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
        "-machine", "memory-backend=mem",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-monitor", "none", "-no-reboot",
        "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
    ]
    if socket:
        from hugepfn.device.qemu_options import device_json
        argv += ["-device", device_json(socket)]
    return argv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Boot e2e guests against served hugepfn devices.")
    parser.add_argument("--cache", default=str(REPO / ".e2e-cache"), help="where build-root.sh put the root")
    parser.add_argument("--profile", help="one run with this profile (default: the runs of make e2e: "
                                          + ", ".join(f"{p} over {a}" for p, a in RUNS) + ")")
    parser.add_argument("--attach", choices=ATTACH_MODES, default="socket-path",
                        help="with --profile: serve --socket-path=PATH, or a socket this script passes with --fd")
    parser.add_argument("--backend", default="python", choices=("python", "libvfio-user"),
                        help="hugepfn serve --backend for socket-path runs (fd runs are python)")
    parser.add_argument("--accel", default=os.environ.get("HUGEPFN_E2E_ACCEL", "tcg"), choices=("tcg", "kvm"))
    parser.add_argument("--memory", type=int, default=512, help="guest RAM in MiB")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("HUGEPFN_E2E_TIMEOUT", 420)),
                        help="seconds for each guest run")
    parser.add_argument("--inject-timeout", type=int, default=90,
                        help="seconds the guest polls the error queue after READY-FOR-INJECT")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="one more QEMU argument (repeat for several), e.g. to try firmware options")
    parser.add_argument("--no-device", action="store_true",
                        help="boot without a device (checks only that the root and guest work)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
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
    say(f"root: {(root / '.hugepfn-root-complete').read_text().strip()}")

    if args.no_device:
        runs = [(None, None)]
    elif args.profile:
        runs = [(args.profile, args.attach)]
    else:
        runs = list(RUNS)
    outcomes = []
    for profile, attach in runs:
        name = "no-device" if profile is None else f"{profile}-{attach}"
        if len(runs) > 1:
            say(f"--- {profile}, attached with --{attach}")
        report, seconds = Run(args, root, kernel, cache / "logs" / name, profile, attach).go()
        failed = report.failed
        passed = len(report.results) - len(failed)
        outcomes.append((name, passed, len(report.results), report.not_reached, failed))
        say(f"{name}: {passed} of {len(report.results)} checks passed in {seconds:.0f} s"
            + (f"; FAILED: {', '.join(failed)}" if failed else "")
            + (f"; not reached: {len(report.not_reached)}" if report.not_reached else ""))
    if len(runs) > 1:
        bad = [name for name, _p, _t, _n, failed in outcomes if failed]
        say(f"{len(runs) - len(bad)} of {len(runs)} guest runs passed in {time.monotonic() - started:.0f} s"
            + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    return 1 if any(failed for *_, failed in outcomes) else 0


class Run:
    """One guest run: serve (or not), boot, react to the guest's lines, judge."""

    def __init__(self, args, root: Path, kernel: str, logs: Path, profile: str | None, attach: str | None):
        self.args, self.root, self.kernel, self.logs = args, root, kernel, logs
        self.profile, self.attach = profile, attach
        self.report = Report()
        self.facts: dict[str, str] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def go(self) -> tuple[Report, float]:
        started = time.monotonic()
        server = guest = None
        share = Path(tempfile.mkdtemp(prefix="hugepfn-e2e-"))
        try:
            if self.profile is not None:
                try:
                    self.facts = device_facts(self.profile)
                except Exception as exc:  # the device model is another part of the project; say what broke
                    self.report.record(False, "device-model", f"cannot read the register map of {self.profile}: {exc}")
                    return self.report, time.monotonic() - started
            self.facts.setdefault("INJECT_TIMEOUT", str(self.args.inject_timeout))
            self.build_initramfs(share / "initramfs.gz")
            self.socket_host = share / "gpu.sock"
            if self.profile is not None:
                server = self.serve()
                if server is None:
                    return self.report, time.monotonic() - started
            guest = self.boot(share)
            self.watch(guest, server)
        finally:
            if guest is not None:
                guest.close()
            stop(server)
            shutil.rmtree(share, ignore_errors=True)
        return self.report, time.monotonic() - started

    def build_initramfs(self, path: Path) -> None:
        build = [sys.executable, str(HERE / "mkinitramfs.py"), str(path),
                 "--busybox", str(self.root / "usr" / "bin" / "busybox"), "--init", str(HERE / "guest-init.sh")]
        for key, value in self.facts.items():
            build += ["--set", f"{key}={value}"]
        subprocess.run(build, check=True, timeout=60)

    def serve(self) -> subprocess.Popen | None:
        """`hugepfn serve` on the share directory's socket; None (after a FAIL) if it never got ready."""
        ready_r, ready_w = os.pipe()
        command = [hugepfn_program(), "serve", "--profile", self.profile, "--ready-fd", str(ready_w)]
        keep = [ready_w]
        listener = None
        if self.attach == "fd":      # as a manager does: bind and listen here, hand the socket over
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.socket_host))
            listener.listen(4)
            command += [f"--fd={listener.fileno()}", "--backend", "python"]
            keep.append(listener.fileno())
        else:
            command += [f"--socket-path={self.socket_host}", "--backend", self.args.backend]
        with open(self.logs / "serve.log", "w") as serve_log:
            server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=serve_log, stderr=subprocess.STDOUT,
                                      start_new_session=True, pass_fds=keep)
        os.close(ready_w)
        if listener is not None:
            listener.close()         # the server holds its own copy now
        try:
            problem = wait_ready(ready_r, server, timeout=30)
        finally:
            os.close(ready_r)
        how = f"--fd={keep[-1]} (a socket bound here)" if self.attach == "fd" else f"--socket-path={self.socket_host}"
        self.report.record(problem is None, "serve",
                           problem or f"{self.profile} served with {how}, "
                                      f"ready on --ready-fd (log: {self.logs / 'serve.log'})")
        if problem:
            stop(server)
            return None
        return server

    def boot(self, share: Path) -> "Guest":
        cpu = "max"
        if self.profile is not None:      # (e2e-smoke runs without the project installed)
            from hugepfn.device.profiles import load_profile
            from hugepfn.device.qemu_options import cpu_option
            cpu = cpu_option(load_profile(self.profile))
        argv = qemu_argv(self.kernel, f"{GUEST_DIR}/initramfs.gz", self.args.accel, self.args.memory,
                         None if self.profile is None else f"{GUEST_DIR}/gpu.sock", cpu) + self.args.qemu_arg
        extra = f", then {' '.join(self.args.qemu_arg)}" if self.args.qemu_arg else ""
        say(f"booting {self.kernel} under {self.args.accel}, -cpu {cpu}{extra} "
            f"(console log: {self.logs / 'console.log'})")
        return Guest(self.root, share, argv, self.logs / "console.log")

    def watch(self, guest: "Guest", server: subprocess.Popen | None) -> None:
        report, args = self.report, self.args
        deadline = time.monotonic() + args.timeout
        seen_done = gave_up = stopped_vm = no_inject = False
        for line in guest.lines(deadline):
            match = CHECK_LINE.search(line)
            if record := RECORD_LINE.search(line):
                check_record(record[1], self.profile, report)
            elif bar := BAR_LINE.search(line):
                self.check_placement(int(bar[1]), int(bar[2], 16), int(bar[3], 16))
            elif match:
                report.record(match[1] == "PASS", match[2], match[3])
            elif "READY-FOR-INJECT" in line:
                if not inject(args, self.facts, self.socket_host, report, self.logs):
                    no_inject = True
                    break   # nothing left for the guest to see; do not wait out its poll
            elif "E2E DONE" in line:
                seen_done, gave_up = True, "failed=1" in line
            elif "Unrecoverable error detected" in line:
                # QEMU's answer to the vfio ERR irq: the VM is stopped for good, stop waiting.
                report.record(False, "vm-running", f"QEMU stopped the VM: {line.strip()}")
                stopped_vm = True
                break
            elif "qemu-system" in line or "vfio-user" in line or "Kernel panic" in line:
                say(f"console: {line}")
        status = None
        if not (stopped_vm or no_inject):
            try:
                status = guest.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = None
        if stopped_vm:
            report.missing(["guest-exit"], guest_gave_up=True)
        elif no_inject:
            gave_up = True
            report.missing(["guest-exit"], guest_gave_up=True)
        elif status is None:
            report.record(False, "guest-exit", f"guest still running after {args.timeout:.0f} s; killed")
        else:
            report.record(status == 0 and seen_done, "guest-exit",
                          f"QEMU exited with status {status}" + ("" if seen_done else " before the guest finished"))
        expected = ("boot",) if self.profile is None else (*GUEST_CHECKS, "placement", "record-decode")
        report.missing(expected, guest_gave_up=gave_up or stopped_vm)
        if server is not None:
            alive = server.poll() is None
            report.record(alive, "serve-alive",
                          "server still running after the guest" if alive
                          else f"server exited with status {server.returncode} (log: {self.logs / 'serve.log'})")

    def check_placement(self, bar: int, start: int, size: int) -> None:
        """The guest's view of the BAR against the device's: where its BAR register was
        programmed (QEMU forwards the firmware's config writes), decoded by lspci."""
        command = [hugepfn_program(), "lspci", "--socket", str(self.socket_host), "-vv"]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.report.record(False, "placement", "hugepfn lspci --socket did not finish in 60 s")
            return
        (self.logs / "lspci.log").write_text(done.stdout + done.stderr)
        region = re.search(rf"Region {bar}: Memory at ([0-9a-f]+) \(64-bit, prefetchable\) \[size=(\w+)\]",
                           done.stdout)
        want = int(self.facts["DATA_BAR_SIZE"], 16)
        if done.returncode != 0 or region is None:
            said = (done.stderr.strip().splitlines() or ["no Region line"])[-1]
            self.report.record(False, "placement", f"hugepfn lspci --socket -> exit {done.returncode}: {said}")
            return
        device_at = int(region[1], 16)
        ok = device_at == start and size == want
        self.report.record(ok, "placement",
                           f"BAR{bar} at {start:#x} size {size:#x} in the guest; the device's BAR{bar} register "
                           f"says {device_at:#x} [size={region[2]}] (hugepfn lspci --socket)"
                           + ("" if size == want else f"; the profile says size {want:#x}"))


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
