"""Benchmarks: `python -m trainer.bench train ...` (training throughput, MFU, overhead) and `... input ...`."""
