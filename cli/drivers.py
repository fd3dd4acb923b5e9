"""``--driver-module MODULE`` (run, compare, crosscheck): variant drivers for this invocation.

MODULE is imported and the drivers its ``HUGEPFN_DRIVERS`` maps (name -> driver class) become
available to every scenario of the command, as installed ones (the ``hugepfn.drivers`` entry
point) always are.  A module that cannot be imported or declares no drivers is bad input.
"""
from __future__ import annotations

import argparse


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE and make the drivers its HUGEPFN_DRIVERS declares available "
                             "(repeatable; installed drivers need nothing)")


def load(args: argparse.Namespace) -> None:
    """Register the drivers of every --driver-module (DriverError, a ValueError, when one fails)."""
    from hugepfn.host.drivers import load_driver_modules

    load_driver_modules(args.driver_module)
