"""Benchmarks of localbatch and the sample helpers: `make bench` or `python -m bench`."""
