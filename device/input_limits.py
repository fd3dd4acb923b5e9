"""Reading files a user names: only regular files, only up to a size, only so deep.

``hugepfn run /dev/zero`` or ``profile = "/dev/zero"`` once read until memory ran out, a
FIFO blocked forever, and a TOML document nested a few hundred levels deep ended in a
RecursionError traceback.  Every file the program reads goes through ``read_regular_file``
(opened without blocking, refused unless it is a regular file, read to at most a limit),
and every TOML document through ``load_toml`` (the same, then UTF-8, then a nesting bound
checked without recursion).  Failures are ``InputError``: a ValueError with one line
naming the file and the limit, which the CLI prints and turns into exit status 2.
"""
from __future__ import annotations

import os
import stat
import tomllib

MiB = 1 << 20
MAX_TOML_BYTES = 1 * MiB      # the bundled scenarios and profiles are a few KiB
MAX_NESTING = 32              # tables and arrays inside each other (json-c's bound for VERSION)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


class InputError(ValueError):
    """A file the user named cannot be taken as input (one line, names the file)."""


def nesting_depth(value) -> int:
    """How deep dicts and lists sit inside each other (a scalar is 0, ``{}`` is 1), without
    recursion, so that the check itself cannot overflow the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, (list, tuple)):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node)
    return deepest


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular_file(path: str | os.PathLike, limit: int, label: str) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; errors start with ``label``.

    O_NONBLOCK makes opening a FIFO return at once (instead of waiting for a writer) so
    that it can be refused; a file that grows while it is read is cut at ``limit`` + 1
    bytes and refused too.  A missing or unreadable file raises the usual OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{label}: {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise InputError(f"{label}: {st.st_size} bytes, more than the {limit}-byte limit")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(f"{label}: grew past the {limit}-byte limit while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_toml(path: str | os.PathLike, label: str, limit: int = MAX_TOML_BYTES,
              max_depth: int = MAX_NESTING) -> dict:
    """A TOML document from ``path`` within ``limit`` bytes and ``max_depth`` levels.

    Limits raise InputError (starting with ``label``); a syntax error is left as
    tomllib.TOMLDecodeError for the caller to word, a missing file as OSError."""
    raw = read_regular_file(path, limit, label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    too_deep = InputError(f"{label}: tables and arrays nested deeper than {max_depth} levels")
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise too_deep from None
    if nesting_depth(data) > max_depth:
        raise too_deep
    return data
