"""Benchmarks with their targets: ``python -m bench [name ...]`` prints figures and ratios."""
