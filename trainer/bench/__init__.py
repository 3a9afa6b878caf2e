"""Benchmarks: `python -m trainer.bench <name> ...`."""
