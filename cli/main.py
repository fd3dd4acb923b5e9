"""Entry point of the `hugepfn` program.

Each subcommand is a module of this package exposing ``add_parser(subparsers)``
(which registers the command and sets ``func`` to a callable taking the parsed
arguments and returning an exit status).  User errors (``ValueError`` and its
subclasses such as ScenarioError or ProfileError, and ``OSError``) become one line on
stderr and a non-zero exit status; nothing a user types should print a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# Order is the order shown by --help; each is the module hugepfn.cli.<name with _ for ->.
COMMANDS = ("run", "scenarios", "compare", "crosscheck", "check-trace", "serve", "inject", "monitor", "status", "lspci",
            "backend-json")


def version() -> str:
    try:
        return importlib.metadata.version("hugepfn")
    except importlib.metadata.PackageNotFoundError:   # run from a tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hugepfn",
        description="Emulate a VFIO GPU-style device with huge pfnmap BARs and the kernel paths over it.",
    )
    parser.add_argument("--version", action="version", version=f"hugepfn {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"hugepfn.cli.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not built yet
        module.add_parser(sub)
    return parser


def run_command(command: str, func, args) -> int:
    """Run one command; a user error is one line on stderr and an exit status, never a traceback."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("hugepfn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except ValueError as exc:
        print(f"hugepfn {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        detail = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hugepfn {command}: error: {detail}{where}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
