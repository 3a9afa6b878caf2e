"""Benchmarks: `python -m devtools.bench train|input`."""
