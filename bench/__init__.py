"""Benchmarks of the capacity code: offerings search and concurrent reservations.

Run everything with `python -m bench`; see bench/__main__.py for the options.
"""
