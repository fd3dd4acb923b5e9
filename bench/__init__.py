"""Benchmarks (`make bench`): each module in this package prints its figures."""
