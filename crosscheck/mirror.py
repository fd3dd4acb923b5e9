#!/usr/bin/env python3
"""The URI of the Debian archive this machine's apt already uses (for the QEMU root and kernels).

`make e2e` must not name a package mirror in the repository, so it asks the
host's own apt configuration: the one-line format of /etc/apt/sources.list and
sources.list.d/*.list, and the deb822 format of sources.list.d/*.sources.
An entry counts as the Debian archive when it is a `deb` (binary) source whose
suite is a Debian codename or release alias and not a security suite (the
security archive carries only the -security suites, never the packages we need).

HUGEPFN_E2E_MIRROR overrides the lookup.  Exit status 1 with one line on
stderr when nothing qualifies.  Standard library only: it runs on the host's
python3 before any virtual environment exists.
"""
from __future__ import annotations

import glob
import os
import re
import sys

APT_DIR = "/etc/apt"

# Debian codenames and suite aliases; a suite like "bookworm-updates" counts by its base name.
DEBIAN_SUITES = frozenset({
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental",
})


def suite_is_debian_archive(suite: str) -> bool:
    base, _, pocket = suite.partition("-")
    if pocket == "security" or suite.endswith("/updates"):
        return False
    return base in DEBIAN_SUITES


def one_line_entries(text: str):
    """(types, uris, suites) of each `deb ...` line of a .list file."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # drop the optional [arch=... signed-by=...] block
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) < 3:
            continue
        yield [words[0]], [words[1]], [words[2]]


def deb822_entries(text: str):
    """(types, uris, suites) of each enabled stanza of a .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[:1] in " \t" and key:  # continuation line
                fields[key] += " " + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "uris" in fields and "suites" in fields:
            yield fields.get("types", "").split(), fields["uris"].split(), fields["suites"].split()


def candidate_uris(apt_dir: str = APT_DIR):
    files = []
    main_list = os.path.join(apt_dir, "sources.list")
    if os.path.isfile(main_list):
        files.append(main_list)
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        entries = deb822_entries(text) if path.endswith(".sources") else one_line_entries(text)
        for types, uris, suites in entries:
            if "deb" not in types:
                continue
            if not any(suite_is_debian_archive(s) for s in suites):
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")) and "security" not in uri:
                    yield uri.rstrip("/")


def debian_mirror() -> str:
    """The archive URI (HUGEPFN_E2E_MIRROR, else the first Debian archive apt uses)."""
    override = os.environ.get("HUGEPFN_E2E_MIRROR", "").strip()
    if override:
        return override.rstrip("/")
    for uri in candidate_uris():
        return uri
    raise ValueError(f"no Debian archive URI in {APT_DIR}/sources.list or sources.list.d (set HUGEPFN_E2E_MIRROR)")


def main() -> int:
    override = os.environ.get("HUGEPFN_E2E_MIRROR", "").strip()
    if override:
        print(override.rstrip("/"))
        return 0
    apt_dir = sys.argv[1] if len(sys.argv) > 1 else APT_DIR
    for uri in candidate_uris(apt_dir):
        print(uri)
        return 0
    print(f"e2e: no Debian archive URI found in {apt_dir}/sources.list or sources.list.d "
          "(set HUGEPFN_E2E_MIRROR)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
