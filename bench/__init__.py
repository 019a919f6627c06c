"""Benchmarks (pytest-benchmark) and the ratio report; run with `python -m bench`."""
