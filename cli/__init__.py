"""hugepfn.cli: the one `hugepfn` command; each subcommand lives in its own module."""
