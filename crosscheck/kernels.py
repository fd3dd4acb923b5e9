"""The kernel matrix of the crosscheck and the cache of Debian kernel builds.

Each kernel profile of the model (hugepfn.host.kernel) that is crosschecked names a Debian
package series here.  ``fetch(series, arch, cache)`` resolves the series' newest Debian build
with apt (a private configuration: sources, lists, cache and state all under the cache
directory, so the host's apt is neither used nor changed), downloads the image, modules and
base packages with ``apt-get download``, and keeps only what a guest needs: the kernel image,
its config, and the decompressed modules of the VFIO stack (plus what they depend on, read
from each module's modinfo).  A second call returns the cached build at once.

Since 6.19 Debian's ``linux-image-*`` is a meta package: the kernel is in ``linux-binary-*``,
the modules in ``linux-modules-*`` and the config in ``linux-base-*``; older series carry
everything in the image package.  Both layouts are handled.
"""
from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Debian archives that carry the series below (bookworm: 6.1, bookworm-backports: 6.12,
# trixie: 6.12, trixie-backports: 6.16 .. 7.3, sid: the newest 7.x).
SUITES = ("bookworm", "bookworm-backports", "trixie", "trixie-backports", "sid")
SECURITY_SUITES = ("bookworm-security", "trixie-security")

# x86_64 series crosschecked by `make crosscheck`, oldest first; arm64 runs the real
# nvgrace-gpu (built at crosscheck time) on the series below.
X86_SERIES = ("6.1", "6.12", "6.16", "6.17", "6.18", "6.19", "7.0", "7.1", "7.2", "7.3")
ARM64_SERIES = ("7.2",)
DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64"}

# Modules the guest loads (in this order), by their file names without .ko; what each
# depends on is added from its modinfo.
GUEST_MODULES = {
    "x86_64": ("irqbypass", "vfio", "vfio_iommu_type1", "vfio-pci-core", "vfio-pci", "hwpoison-inject"),
    "arm64": ("virtio_iommu", "irqbypass", "vfio", "vfio_iommu_type1", "vfio-pci-core", "vfio-pci",
              "hwpoison-inject"),
}


class KernelError(RuntimeError):
    """A kernel cannot be resolved or fetched; the message is one line."""


@dataclass(frozen=True)
class CachedKernel:
    series: str
    arch: str
    release: str                 # uname -r, e.g. 7.3.4+deb13-amd64
    version: str                 # the Debian package version
    directory: Path              # holds vmlinuz, config, modules/*.ko, kernel.json

    @property
    def image(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    def module(self, name: str) -> Path | None:
        path = self.directory / "modules" / f"{name}.ko"
        return path if path.exists() else None

    @property
    def module_order(self) -> list[str]:
        return json.loads((self.directory / "kernel.json").read_text())["modules"]

    @property
    def has_vfio(self) -> bool:
        """False when the archive carries this kernel's image but not its modules (Debian's
        6.19, 7.0 and 7.1 backports here): only steps without a vfio device can run on it."""
        return "vfio-pci" in self.module_order

    def config_value(self, option: str) -> str | None:
        """The value of CONFIG_<option> (``y``, ``m``, a string) or None when not set."""
        pattern = re.compile(rf"^CONFIG_{re.escape(option)}=(.*)$", re.M)
        match = pattern.search(self.config.read_text()) if self.config.exists() else None
        return match[1].strip('"') if match else None


def _security_uri(mirror: str) -> str:
    return mirror[: -len("/debian")] + "/debian-security" if mirror.endswith("/debian") else mirror + "-security"


class PrivateApt:
    """apt-get/apt-cache with every directory under ``root``; updated once per day."""

    def __init__(self, root: Path, mirror: str, arches: tuple[str, ...]) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial", "etc"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        sources = [f"deb {mirror} {suite} main" for suite in SUITES]
        sources += [f"deb {_security_uri(mirror)} {suite} main" for suite in SECURITY_SUITES]
        (root / "etc" / "sources.list").write_text("\n".join(sources) + "\n")
        keyring = root / "etc" / "keyring.gpg"
        # gpgv accepts concatenated keyrings: bookworm's keyring package ships the trixie
        # and sid keys as separate files
        keys = sorted(Path("/usr/share/keyrings").glob("debian-archive-*.gpg"))
        if not keys:
            raise KernelError("no Debian archive keyring in /usr/share/keyrings "
                              "(apt-get install debian-archive-keyring)")
        keyring.write_bytes(b"".join(k.read_bytes() for k in keys))
        self.options = [
            f"-oDir::Etc::SourceList={root}/etc/sources.list", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={root}/lists", f"-oDir::Cache={root}/cache",
            "-oDir::State::status=/dev/null", f"-oDir::Etc::Trusted={keyring}",
            "-oDir::Etc::TrustedParts=/dev/null", "-oAPT::Sandbox::User=root", "-qq",
        ] + [f"-oAPT::Architectures::={a}" for a in arches]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run([tool, *self.options, *args], capture_output=True, text=True, cwd=cwd)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise KernelError(f"{tool} {' '.join(args[:2])} failed: {last}")
        return done.stdout

    def update(self, max_age_s: float = 86400) -> None:
        stamp = self.root / "lists" / ".updated"
        import time
        if stamp.exists() and time.time() - stamp.stat().st_mtime < max_age_s:
            return
        self._run("apt-get", "update")
        stamp.touch()

    def package_names(self, pattern: str) -> list[str]:
        return [line.split(" ", 1)[0] for line in self._run("apt-cache", "search", "--names-only", pattern).splitlines()]

    def show(self, package: str) -> dict[str, str]:
        fields: dict[str, str] = {}
        for line in self._run("apt-cache", "show", package).splitlines():
            if not line.strip():
                break           # the first (best) stanza
            key, sep, value = line.partition(":")
            if sep and not line[0].isspace():
                fields[key] = value.strip()
        return fields

    def has(self, package: str) -> bool:
        try:
            return bool(self.show(package).get("Version"))
        except KernelError:
            return False

    def download(self, packages: list[str], into: Path) -> list[Path]:
        self._run("apt-get", "download", *packages, cwd=into)
        return sorted(into.glob("*.deb"))


def _natural_key(release: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", release))


def resolve_release(apt: PrivateApt, series: str, arch: str) -> str:
    """The newest Debian kernel release (uname -r) of ``series`` for ``arch``."""
    deb_arch = DEB_ARCH[arch]
    name = re.compile(rf"^linux-image-({re.escape(series)}[.-][0-9][^ ]*-{deb_arch})$")
    releases = []
    for package in apt.package_names(rf"^linux-image-{re.escape(series)}[.-]"):
        match = name.match(package)
        if match and not re.search(r"-(cloud|rt)-", package) and not package.endswith(("-dbg", "-unsigned")):
            releases.append(match[1])
    if not releases:
        raise KernelError(f"no Debian kernel of series {series} for {deb_arch} in {', '.join(SUITES)}")
    return max(releases, key=_natural_key)


def _read_modinfo(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    info = {}
    for key in (b"depends", b"vermagic", b"name"):
        match = re.search(rb"(?:^|\0)" + key + rb"=([^\0]*)\0", data)
        if match:
            info[key.decode()] = match[1].decode(errors="replace")
    return info


def _module_files(tree: Path) -> dict[str, Path]:
    """Module name (as modinfo spells it and as file names do) -> file, for one extracted tree."""
    found = {}
    for path in tree.glob("usr/lib/modules/*/kernel/**/*.ko*"):
        stem = path.name.split(".ko")[0]
        found[stem] = path
        found.setdefault(stem.replace("-", "_"), path)
    for path in tree.glob("lib/modules/*/kernel/**/*.ko*"):
        stem = path.name.split(".ko")[0]
        found[stem] = path
        found.setdefault(stem.replace("-", "_"), path)
    return found


def _decompress(src: Path, dst: Path) -> None:
    if src.suffix == ".xz":
        dst.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.suffix == ".zst":
        done = subprocess.run(["zstd", "-dc", str(src)], capture_output=True)
        if done.returncode:
            raise KernelError(f"cannot decompress {src.name} (zstd missing?)")
        dst.write_bytes(done.stdout)
    else:
        shutil.copyfile(src, dst)


def fetch(series: str, arch: str, cache: Path, mirror: str) -> CachedKernel:
    """The cached kernel of ``series`` (fetched and unpacked on first use)."""
    if arch not in DEB_ARCH:
        raise KernelError(f"unknown arch {arch!r} (known: {', '.join(DEB_ARCH)})")
    kernels = cache / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    pinned = kernels / f"{series}-{arch}.release"
    if pinned.exists():
        cached = load(kernels / pinned.read_text().strip(), series, arch)
        if cached is not None:
            return cached
    apt = PrivateApt(cache / "apt", mirror, tuple(DEB_ARCH.values()))
    apt.update()
    release = resolve_release(apt, series, arch)
    directory = kernels / release
    cached = load(directory, series, arch)
    if cached is None:
        cached = _unpack(apt, series, arch, release, directory)
    pinned.write_text(release + "\n")
    return cached


def load(directory: Path, series: str, arch: str) -> CachedKernel | None:
    meta = directory / "kernel.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return CachedKernel(series, arch, info["release"], info["version"], directory)


def _unpack(apt: PrivateApt, series: str, arch: str, release: str, directory: Path) -> CachedKernel:
    image_pkg = f"linux-image-{release}"
    shown = apt.show(image_pkg)
    version = shown.get("Version", "?")
    packages = [image_pkg]
    depends = shown.get("Depends", "")
    for part in ("linux-binary", "linux-modules", "linux-base"):
        # only those the archive has: an image package may name a base package that was
        # never uploaded (6.18.15); the image then carries everything itself
        if f"{part}-{release}" in depends and apt.has(f"{part}-{release}"):
            packages.append(f"{part}-{release}")
    with tempfile.TemporaryDirectory(prefix="hugepfn-kernel-", dir=directory.parent) as tmp:
        tmp_path = Path(tmp)
        debs = apt.download(packages, tmp_path)
        tree = tmp_path / "tree"
        for deb in debs:
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
            if done.returncode:
                raise KernelError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()[-200:]}")
        image = next(iter(list(tree.glob("boot/vmlinuz-*")) + list(tree.glob("usr/lib/modules/*/vmlinuz"))), None)
        config = next(iter(list(tree.glob("boot/config-*")) + list(tree.glob("usr/lib/modules/*/config"))), None)
        if image is None:
            raise KernelError(f"{', '.join(packages)} hold no kernel image")
        staging = tmp_path / "out"
        (staging / "modules").mkdir(parents=True)
        shutil.copyfile(image, staging / "vmlinuz")
        if config is not None:
            shutil.copyfile(config, staging / "config")
        files = _module_files(tree)
        order: list[str] = []

        def add(name: str) -> None:
            if name in order or name.replace("-", "_") in (o.replace("-", "_") for o in order):
                return
            src = files.get(name) or files.get(name.replace("-", "_"))
            if src is None:
                return          # built in (or absent): nothing to load
            dst = staging / "modules" / f"{name}.ko"
            _decompress(src, dst)
            for dep in filter(None, _read_modinfo(dst).get("depends", "").split(",")):
                add(dep)
            order.append(name)

        for name in GUEST_MODULES[arch]:
            add(name)
        missing = [] if order else [f"linux-modules-{release}"]
        (staging / "kernel.json").write_text(json.dumps(
            {"series": series, "arch": arch, "release": release, "version": version, "packages": packages,
             "modules": order, "missing": missing}, indent=1) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    return CachedKernel(series, arch, release, version, directory)
